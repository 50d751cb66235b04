"""The database engine and the per-request connection.

Every request that needs the database checks out one pooled connection the
first time it asks for it (`get_db`) and returns it when the request ends.
Connections run in autocommit mode: each operation of this service is a single
statement (the toggle is one `UPDATE ... RETURNING`), so there is no BEGIN or
COMMIT round trip to pay, and nothing half-done can be left behind.
"""

import os
from contextlib import contextmanager
from datetime import datetime, timedelta

import orjson
import psycopg2.extensions
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from flask import current_app, g
from sqlalchemy import Boolean, DateTime, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from . import token_digest
from .timezones import register_sqlite_functions

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")

POSTGRES_SCHEMES = ("postgres", "postgresql")


def normalize_url(url):
    """Accept `postgres://`, `postgresql://` and explicit driver URLs alike.

    Heroku and Render hand out `postgres://`, which SQLAlchemy does not know,
    and SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3; this service
    ships psycopg2.
    """
    parsed = make_url(url)
    if parsed.drivername in POSTGRES_SCHEMES:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def default_sqlite_url(instance_path):
    return "sqlite:///" + os.path.join(instance_path, "todo.sqlite")


def build_engine(config, instance_path, url=None):
    """The engine for DATABASE_URL, or for `url` with the same settings."""
    url = normalize_url(url or config.get("DATABASE_URL") or default_sqlite_url(instance_path))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.get_backend_name() == "postgresql":
        return _postgres_engine(url, config)
    raise RuntimeError(f"unsupported database: {url.get_backend_name()}")


def _postgres_engine(url, config):
    """An engine that works the same on a direct connection and through a transaction pooler.

    PgBouncer in transaction mode (Neon's pooled URL) refuses the `options`
    startup parameter and hands each transaction whichever server connection is
    free, so no session state of ours may be relied on except the parameters it
    tracks per client, the time zone among them. The statement timeout is
    therefore sent with every statement (`SET LOCAL`, which ends with the
    statement's own transaction) rather than set once per connection. Nothing
    else is kept in the session either: no prepared statements (psycopg2 sends
    every statement as text), no temporary tables, no advisory locks.
    """
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        hide_parameters=True,  # an error's text never carries a token or a user's data into a log
        pool_size=config["DATABASE_POOL_SIZE"],
        max_overflow=config["DATABASE_MAX_OVERFLOW"],
        pool_timeout=config["DATABASE_POOL_TIMEOUT"],
        pool_pre_ping=config["DATABASE_POOL_PRE_PING"],
        connect_args={"connect_timeout": config["DATABASE_CONNECT_TIMEOUT"], "application_name": "todo-api"},
    )
    event.listen(engine, "connect", _set_utc)
    event.listen(engine, "checkin", _rollback_open_transaction)
    event.listen(
        engine,
        "before_cursor_execute",
        statement_timeout_prefixer(config["DATABASE_STATEMENT_TIMEOUT_MS"]),
        retval=True,
    )
    return engine


def _set_utc(dbapi_connection, _record):
    """Timestamps without a zone compare in UTC. PgBouncer tracks TimeZone per client and
    sets it again on whichever server connection serves the next transaction."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")
# One query string: the setting is made in the transaction's first statement, with no timeout of its own.
BEGIN_WITH_SETTING = "BEGIN; SELECT set_config(%(name)s, %(value)s, true)"


def statement_timeout_prefixer(default_ms):
    """A `before_cursor_execute` hook that bounds each statement's time on the server.

    `SET LOCAL statement_timeout = N; <statement>` is one query string, run by
    Postgres as one implicit transaction (or inside the explicit one in
    progress), so the setting lasts exactly as long as the statement's
    transaction and never reaches another client of a pooled server connection.
    A statement may ask for its own bound with the execution option
    `statement_timeout_ms`; 0 means none. Even 0 is sent: a pooled server
    connection may carry a timeout that another client set for its session.
    """

    def prefix(_conn, _cursor, statement, parameters, context, _executemany):
        timeout_ms = context.execution_options.get("statement_timeout_ms", default_ms) if context else default_ms
        if statement.startswith(TRANSACTION_CONTROL):
            return statement, parameters
        return f"SET LOCAL statement_timeout = {int(timeout_ms)}; {statement}", parameters

    return prefix


def _sqlite_engine(url):
    if url.database and url.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        hide_parameters=True,
        connect_args={"timeout": 15, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()
        dbapi_connection.create_function("advance_timestamp", 2, advance_timestamp_text, deterministic=True)
        dbapi_connection.create_function(token_digest.FUNCTION, 1, token_digest.sqlite_token_digest, deterministic=True)
        register_sqlite_functions(dbapi_connection)

    return engine


class advanced(FunctionElement):
    """`advanced(column, now)`: the later of `now` and the column plus one microsecond.

    A row's `updated_at` set this way moves forward on every write, even when two
    writes read the same microsecond from the clock (two workers at once) or the
    clock steps back, so a version derived from it (the ETag) changes on every
    write. It is evaluated on the row the write actually changes, under its lock.
    """

    type = DateTime()
    inherit_cache = True


@compiles(advanced)
def _advanced_postgresql(element, compiler, **kw):
    column, now = element.clauses
    return f"GREATEST({compiler.process(now, **kw)}, {compiler.process(column, **kw)} + INTERVAL '1 microsecond')"


@compiles(advanced, "sqlite")
def _advanced_sqlite(element, compiler, **kw):
    return f"advance_timestamp({compiler.process(element.clauses, **kw)})"


class unexpired(FunctionElement):
    """`unexpired(column)`: the time in the column is still to come, by the database's clock.

    On Postgres a plain `column > now()` (connections run in UTC, so a naive
    `timestamp` compares right too). On SQLite the column is whatever Better
    Auth or SQLAlchemy wrote: ISO text with a `T` and a `Z`
    (`2026-11-25T21:01:10.073Z`, Better Auth's Kysely adapter), SQLAlchemy's
    `2026-11-25 21:01:10.073000`, or a number of milliseconds since 1970;
    each is turned into a Julian day before comparing, so a session expires at
    its moment, not at the end of its day as a comparison of text would have it.
    """

    type = Boolean()
    inherit_cache = True


@compiles(unexpired)
def _unexpired_postgresql(element, compiler, **kw):
    return f"{compiler.process(element.clauses, **kw)} > now()"


@compiles(unexpired, "sqlite")
def _unexpired_sqlite(element, compiler, **kw):
    column = compiler.process(element.clauses, **kw)
    return (
        f"(CASE WHEN typeof({column}) IN ('integer', 'real') THEN {column} / 86400000.0 + 2440587.5"
        f" ELSE julianday({column}) END) > julianday('now')"
    )


def advance_timestamp_text(stored, now):
    """SQLite's side of `advanced`: SQLite has no microsecond arithmetic on the
    text SQLAlchemy stores its timestamps as (`YYYY-MM-DD HH:MM:SS.ffffff`, a
    fixed width, so text order is time order)."""
    try:
        following = datetime.fromisoformat(stored) + timedelta(microseconds=1)
    except (TypeError, ValueError):
        return now
    return max(now, following.isoformat(sep=" ", timespec="microseconds"))


@contextmanager
def transaction(connection, setting=None):
    """A real transaction on this service's autocommit connections.

    Most requests are one statement and need none; the few that must change
    several rows together (completing a recurring task) open one explicitly.
    SQLite takes its write lock up front, so a read inside cannot go stale.

    `setting`, a (name, value) pair (Postgres only), is set for this transaction
    alone, in the same round trip as BEGIN: statements inside read the value with
    `current_setting(name)`, so it is not in their text, which Postgres writes
    to its log when a statement fails. A transaction pooler keeps it on one
    server connection, and it ends with the transaction.
    """
    if setting is not None:
        name, value = setting
        connection.exec_driver_sql(BEGIN_WITH_SETTING, {"name": name, "value": value}).close()
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.dialect.name == "sqlite" else "BEGIN")
    try:
        yield connection
    except BaseException:
        if not connection.invalidated:  # a dropped connection has no transaction left to end
            connection.exec_driver_sql("ROLLBACK")
        raise
    connection.exec_driver_sql("COMMIT")


def _rollback_open_transaction(dbapi_connection, _record):
    """A connection goes back to the pool outside any transaction, whatever happened."""
    if dbapi_connection is None or dbapi_connection.closed:
        return
    if dbapi_connection.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        with dbapi_connection.cursor() as cursor:  # rollback() is a no-op in autocommit mode
            cursor.execute("ROLLBACK")


def json_dumps(value):
    return orjson.dumps(value).decode()


def get_engine(app=None):
    return (app or current_app).extensions["todo_api.engine"]


def get_db():
    """The request's connection, checked out on first use."""
    if "db" not in g:
        g.db = get_engine().connect()
    return g.db


def first_query(statement, params):
    """Run a request's first, read-only statement; retry it once on a fresh
    connection if the pooled one turns out to be dead (the database restarted).

    This gives what `pool_pre_ping` gives, without a ping's round trip on every
    request: a dropped connection is found by the query itself, and SQLAlchemy
    then discards the pool's other connections from before the drop.
    """
    try:
        return get_db().execute(statement, params)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        close_db()
        return get_db().execute(statement, params)


def close_db(_exc=None):
    connection = g.pop("db", None)
    if connection is not None:
        connection.close()


def ping():
    """Check that the database answers.

    A connection the pool kept from before a database restart fails the first
    time it is used; like `first_query`, try once more on a fresh one, so a
    readiness probe does not report an outage that is over.
    """
    try:
        _select_one()
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        _select_one()


def _select_one():
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def init_app(app):
    app.extensions["todo_api.engine"] = build_engine(app.config, app.instance_path)
    app.teardown_appcontext(close_db)


@contextmanager
def migration_engine(app=None):
    """The engine that schema changes run on: one on DATABASE_MIGRATION_URL when
    that is set (the direct URL, when DATABASE_URL goes through a transaction
    pooler), else the app's own engine."""
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


def _migration_connection(engine):
    """A connection with real transactions, so a failed migration leaves nothing half-done."""
    connection = engine.connect()
    return connection.execution_options(
        isolation_level=connection.dialect.default_isolation_level, statement_timeout_ms=0
    )


def _alembic_config(connection, app_config):
    """Alembic's configuration; migrations read the app's settings (the session table's names) from it."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    config.attributes["app_config"] = app_config
    return config


def upgrade(engine, revision="head", app_config=None):
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


def downgrade(engine, revision, app_config=None):
    with _migration_connection(engine) as connection:
        command.downgrade(_alembic_config(connection, app_config), revision)
        connection.commit()


def current_revision(engine):
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
