"""The app-wide objects the factory builds once, reached through accessors.

They live together in one `AppState` under one key of `app.extensions`, which
no other module names: code asks `get_engine()`, `get_session_lookup()` or
`get_cursors()`, as a request asks `get_db()` for its connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.sql import ColumnElement, Select

    from todo_api.auth.sessions import KnownSessions
    from todo_api.db.connections import ThreadConnections
    from todo_api.tasks.listing import Cursors

_EXTENSION = "todo_api"


@dataclass(frozen=True)
class AppState:
    engine: Engine  # DATABASE_URL's pool
    connections: ThreadConnections  # each thread's connection from that pool (see `database`)
    session_lookup: Select  # the SELECT that turns a token's digest into a user id (see `auth`)
    cursors: Cursors  # signs and checks page cursors (see `listing`)
    session_guard: ColumnElement  # the session check folded into the task routes' statements (see `auth`)
    known_sessions: KnownSessions  # token digest to user id, of sessions the database confirmed (see `auth`)


def init_app(app: Flask, state: AppState) -> None:
    app.extensions[_EXTENSION] = state


def app_state(app: Flask | None = None) -> AppState:
    return (app or current_app).extensions[_EXTENSION]


def get_engine(app: Flask | None = None) -> Engine:
    return app_state(app).engine


def get_thread_connections(app: Flask | None = None) -> ThreadConnections:
    return app_state(app).connections


def get_session_lookup(app: Flask | None = None) -> Select:
    return app_state(app).session_lookup


def get_cursors(app: Flask | None = None) -> Cursors:
    return app_state(app).cursors
