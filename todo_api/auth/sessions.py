"""Who is calling: a live Better Auth session, checked in one way on every route that serves a user's data.

`require_session(bp)` puts that check on a blueprint. Before each request the
caller is identified (`Caller`, in `g.caller`) by the digest of the session
token it carries (see `credentials` and `db.token_digest`): the user id comes
from `KnownSessions`, which remembers only sessions the database has
confirmed, or else from a lookup (`session_lookup`, a 401 for a dead session).
Every statement the request then runs on the caller's data checks the session
again in its own WHERE clause (`session_guard`), so a request of a known
session costs one round trip, and a signed-out (deleted) or expired session
finds nothing on the very next request. What such a request would answer
without rows (an error, an empty list) is answered only once the session is
known to be live: a dead session is 401 before anything else.
"""

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from flask import Blueprint, Flask, current_app, g, request
from marshmallow import ValidationError
from sqlalchemy import LargeBinary, MetaData, bindparam, exists, func, select
from sqlalchemy.sql import ColumnElement, Executable, Select
from werkzeug.exceptions import HTTPException, Unauthorized, UnsupportedMediaType

from todo_api.auth.credentials import credential_from_request, session_token
from todo_api.db import token_digest
from todo_api.db.connections import run_retrying_once
from todo_api.db.tables import session_table, unexpired
from todo_api.errors import handle_error
from todo_api.mode import checks_every_signature, get_mode
from todo_api.ratelimit.bounds import take_user_place
from todo_api.ratelimit.limits import limit_user

log = logging.getLogger(__name__)

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_EXTENSION = "todo_api.auth"


class NotAuthenticated(Unauthorized):
    description = "Not authenticated"

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", "Bearer")]


# -- The session check, in SQL ------------------------------------------------------


def session_lookup(config) -> Select:
    """The one indexed query that turns a live session into a user id; its parameter is the token's digest.

    The token itself never appears in the SQL (see token_digest.py), so no
    database log can hold it. Expiry is checked by the database, against its
    own clock; connections run with timezone UTC, so an old Better Auth's naive
    `timestamp` column compares correctly too.
    """
    sessions = session_table(config, MetaData())
    token = sessions.c[config["SESSION_TOKEN_COLUMN"]]
    return select(sessions.c[config["SESSION_USER_ID_COLUMN"]]).where(
        getattr(func, token_digest.FUNCTION)(token) == bindparam("digest", type_=LargeBinary),
        unexpired(sessions.c[config["SESSION_EXPIRES_AT_COLUMN"]]),
    )


def session_guard(config) -> ColumnElement:
    """SQL: the session whose digest is bound as `digest` is live and is the session of `owner_id`.

    Every statement on a caller's data carries it in its WHERE clause, so the
    session is checked in the same round trip as the work (`Caller.guarded`).
    """
    sessions = session_table(config, MetaData())
    token = sessions.c[config["SESSION_TOKEN_COLUMN"]]
    return exists().where(
        getattr(func, token_digest.FUNCTION)(token) == bindparam("digest", type_=LargeBinary),
        unexpired(sessions.c[config["SESSION_EXPIRES_AT_COLUMN"]]),
        sessions.c[config["SESSION_USER_ID_COLUMN"]] == bindparam("owner_id"),
    )


class KnownSessions:
    """A bounded LRU map from token digest to user id, of sessions the database confirmed.

    Only a key for the rate limits and the owner a statement filters by: every
    statement that uses it checks the session again (`session_guard`).
    """

    def __init__(self, size=10_000):
        self.size, self.users, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, digest):
        with self.lock:
            user_id = self.users.get(digest)
            if user_id is not None:
                self.users.move_to_end(digest)
            return user_id

    def remember(self, digest, user_id):
        with self.lock:
            self.users[digest] = user_id
            self.users.move_to_end(digest)
            if len(self.users) > self.size:
                self.users.popitem(last=False)

    def forget(self, digest) -> bool:
        """Forget a session; whether it was remembered."""
        with self.lock:
            return self.users.pop(digest, None) is not None


@dataclass(frozen=True)
class Sessions:
    """The app's session check: built once, from the configured names of Better Auth's session table."""

    lookup: Select  # digest -> user id (`session_lookup`)
    guard: ColumnElement  # the check folded into statements (`session_guard`)
    known: KnownSessions  # sessions the database confirmed


def init_app(app: Flask) -> None:
    app.extensions[_EXTENSION] = Sessions(session_lookup(app.config), session_guard(app.config), KnownSessions())


def get_sessions(app: Flask | None = None) -> Sessions:
    return (app or current_app).extensions[_EXTENSION]


# -- The caller -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request is from: the user id of its session, and what its statements check that session by.

    Every statement on the caller's data is `guarded` and bound with `params`:
    it finds no row when the session is dead (signed out, expired) or is not
    `user_id`'s. `confirmed`: the database confirmed the session during this
    request (a lookup), not only on an earlier one.
    """

    user_id: str
    digest: bytes
    guard: ColumnElement
    confirmed: bool

    def guarded(self, statement: Executable) -> Executable:
        """`statement` (one with a WHERE clause), finding no row unless the caller's session is live."""
        return _guarded(statement, self.guard)

    @property
    def params(self) -> dict:
        """The guard's parameters; `owner_id` is the one task statements filter by too."""
        return {"owner_id": self.user_id, "digest": self.digest}


@functools.lru_cache(maxsize=512)
def _guarded(statement, guard):
    return statement.where(guard)  # built once per statement: SQLAlchemy then reuses its compiled form


def require_session(bp: Blueprint) -> None:
    """Every route of `bp` serves the caller's own data, and checks the caller's session in one way.

    Before each request the caller is identified (`g.caller`), or the request
    is refused (401). Whatever else a request of a session known from before is
    refused for (404, 412, 415, 422, 400, 503) is answered only once the
    database confirms the session: a dead one is 401 (`confirm_session`).
    """
    bp.before_request(_identify_caller)
    bp.register_error_handler(HTTPException, _answer_live_sessions_only)
    bp.register_error_handler(ValidationError, _answer_live_sessions_only)


def _identify_caller() -> None:
    current = request._get_current_object()  # one context lookup, not one per attribute
    if current.method == "OPTIONS":  # CORS preflights carry no credentials
        return
    caller = authenticate(current_app._get_current_object(), current)
    limit_user(caller.user_id)  # after authentication: the per-user limit is keyed by the user
    take_user_place(caller.user_id)  # then one of the user's places, waiting for one if need be
    g.caller = caller  # last: a refusal before this (401, 415, 429) is answered as it is


def authenticate(app: Flask, current_request) -> Caller:
    """The caller of a request, from its Better Auth session; 401 without a live one.

    A session the database confirmed before (`KnownSessions`) is taken as the
    caller's without a lookup; an unknown one is looked up first.
    """
    config = app.config
    credential, from_cookie = credential_from_request(config, current_request)
    check_signature = checks_every_signature(get_mode(app))
    token = credential and session_token(credential, config["BETTER_AUTH_SECRET"], check_signature)
    if not token:
        log.info("rejected request: missing or malformed credential")
        raise NotAuthenticated()
    digest = token_digest.token_digest(token)
    sessions = get_sessions(app)
    forged_write = from_cookie and current_request.method in STATE_CHANGING_METHODS and not current_request.is_json
    user_id = None if forged_write else sessions.known.get(digest)
    confirmed = user_id is None
    if confirmed:
        user_id = lookup_session(digest)
    if forged_write:
        # A cross-site HTML form cannot send application/json, so this stops forged writes.
        raise UnsupportedMediaType("Requests authenticated by cookie that change data must be sent as application/json")
    return Caller(user_id, digest, sessions.guard, confirmed)


def lookup_session(digest: bytes) -> str:
    """The user id of the live session with this digest (remembered in `KnownSessions`); else 401."""
    sessions = get_sessions()
    user_id = run_retrying_once(lambda db: db.execute(sessions.lookup, {"digest": digest}).scalar(), writes=False)
    if user_id is None:
        sessions.known.forget(digest)
        log.info("rejected request: unknown or expired session")
        raise NotAuthenticated()
    sessions.known.remember(digest, user_id)
    return user_id


def confirm_session(caller: Caller) -> None:
    """Make sure the caller's session is live and theirs before answering anything but their statements' rows:
    401 if not. A session looked up during this request needs no second look."""
    if not caller.confirmed and lookup_session(caller.digest) != caller.user_id:
        raise NotAuthenticated()


def _answer_live_sessions_only(error: Exception):
    """The answer to an error of a request with a caller: 401 first if the session is dead."""
    caller = g.get("caller")
    if caller is not None:
        error = _refusal_first(caller, error)
    return handle_error(error)


def _refusal_first(caller: Caller, error: Exception) -> Exception:
    """`error`, or what comes before it: 401 for a dead session, or the failure to look the session up."""
    if isinstance(error, NotAuthenticated):  # a guarded statement, or a lookup, found the session dead
        if get_sessions().known.forget(caller.digest):
            log.info("rejected request: unknown or expired session")
        return error
    try:
        confirm_session(caller)
    except Exception as failure:  # noqa: BLE001 - answered as the app answers it: 401, or 503 for the database
        return failure
    return error
