"""Schema changes: Alembic's upgrade, downgrade and current revision, and `create_schema`.

The migrations themselves are in `migrations/versions/`. They run on a
connection of their own (`migration_engine`): on DATABASE_MIGRATION_URL when
that is set (the direct URL, when DATABASE_URL goes through a transaction
pooler, which has no place for long transactions and locks), with real
transactions, so a failed migration leaves nothing half-done, and without a
statement timeout.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from flask import Flask, current_app
from sqlalchemy.engine import Connection, Engine

from todo_api.db import token_digest
from todo_api.db.connections import get_engine
from todo_api.db.engine import build_engine
from todo_api.db.tables import auth_tables

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


@contextmanager
def migration_engine(app: Flask | None = None) -> Iterator[Engine]:
    """The engine that schema changes run on: one on DATABASE_MIGRATION_URL when
    that is set, else the app's own engine."""
    app = app or current_app
    url = app.config.get("DATABASE_MIGRATION_URL")
    if not url:
        yield get_engine(app)
        return
    engine = build_engine(app.config, app.instance_path, url=url)
    try:
        yield engine
    finally:
        engine.dispose()


def _migration_connection(engine: Engine) -> Connection:
    """A connection with real transactions, so a failed migration leaves nothing half-done."""
    connection = engine.connect()
    return connection.execution_options(
        isolation_level=connection.dialect.default_isolation_level, statement_timeout_ms=0
    )


def _alembic_config(connection: Connection, app_config) -> Config:
    """Alembic's configuration; migrations read the app's settings (the session table's names) from it."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    config.attributes["app_config"] = app_config
    return config


def upgrade(engine: Engine, revision: str = "head", app_config=None) -> None:
    """Bring the schema to `revision` with Alembic (a database the reference made is adopted).

    `app_config` names Better Auth's session table and columns (by default,
    as the environment does). Then the session token index is made if it is
    missing, for a session table that Better Auth created after the migration
    that makes it had run.
    """
    with _migration_connection(engine) as connection:
        command.upgrade(_alembic_config(connection, app_config), revision)
        token_digest.create_index(connection, token_digest.session_names(app_config))
        connection.commit()


def downgrade(engine: Engine, revision: str, app_config=None) -> None:
    with _migration_connection(engine) as connection:
        command.downgrade(_alembic_config(connection, app_config), revision)
        connection.commit()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def create_schema(engine: Engine, config, with_auth_tables: bool) -> None:
    """Migrate the schema to the newest revision; and, for development and
    tests, create Better Auth-compatible user and session tables. Rows are kept.

    The auth tables come first, so the migrations find the session table and
    index its token digest, as they do on a database Better Auth made.
    """
    if with_auth_tables:
        with engine.begin() as connection:
            auth_tables(config).create_all(connection)
    upgrade(engine, app_config=config)
