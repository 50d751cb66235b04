"""Building the engine for DATABASE_URL: Postgres (direct or through a transaction pooler) or SQLite.

Connections run in autocommit mode: nearly every operation of this service is
a single statement (the toggle is one `UPDATE ... RETURNING`), so there is no
BEGIN or COMMIT round trip to pay, and nothing half-done can be left behind;
the few that change several rows together say so with
`connections.transaction`. No ping precedes a checkout: a dropped connection is
found by a request's own first statement (`connections.run_retrying_once`).
"""

import os
import sys

import orjson
import psycopg2.extensions
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

from todo_api import timezones
from todo_api.db import tables, token_digest

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


def build_engine(config, instance_path: str, url: str | None = None) -> Engine:
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
    every statement as text), no temporary tables, no session-level advisory locks.
    """
    pool_size, max_overflow = config["DATABASE_POOL_SIZE"], config["DATABASE_MAX_OVERFLOW"]
    if threads_are_greenlets():
        # Greenlets are many: a connection opened past the pool's size would be closed at the end of its
        # request and opened again for the next. The pool keeps every connection it may open instead.
        pool_size, max_overflow = pool_size + max_overflow, 0
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        hide_parameters=True,  # an error's text never carries a token or a user's data into a log
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=config["DATABASE_POOL_TIMEOUT"],
        pool_pre_ping=config["DATABASE_POOL_PRE_PING"],
        # Autocommit connections hold no transaction to reset; one left open is rolled back at check-in
        # (`_rollback_open_transaction`), at no cost for the others.
        pool_reset_on_return=None,
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


def statement_timeout_prefixer(default_ms):
    """A `before_cursor_execute` hook that bounds each statement's time on the server.

    `SET LOCAL statement_timeout = N; <statement>` is one query string, run by
    Postgres as one implicit transaction (or inside the explicit one in
    progress), so the setting lasts exactly as long as the statement's
    transaction and never reaches another client of a pooled server connection.
    A statement (or a connection) may ask for its own bound with the execution
    option `statement_timeout_ms`; 0 means none. Even 0 is sent: a pooled server
    connection may carry a timeout that another client set for its session.
    """

    def prefix(connection, _cursor, statement, parameters, context, _executemany):
        options = context.execution_options if context else connection.get_execution_options()
        if statement.startswith(TRANSACTION_CONTROL):
            return statement, parameters
        timeout_ms = options.get("statement_timeout_ms", default_ms)
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
        dbapi_connection.create_function(token_digest.FUNCTION, 1, token_digest.sqlite_token_digest, deterministic=True)
        tables.register_sqlite_functions(dbapi_connection)
        timezones.register_sqlite_functions(dbapi_connection)

    return engine


def _rollback_open_transaction(dbapi_connection, _record):
    """A connection goes back to the pool outside any transaction, whatever happened."""
    if dbapi_connection is None or dbapi_connection.closed:
        return
    if in_transaction(dbapi_connection):
        with dbapi_connection.cursor() as cursor:  # rollback() is a no-op in autocommit mode
            cursor.execute("ROLLBACK")


def in_transaction(dbapi_connection) -> bool:
    """Whether a transaction is open on this psycopg2 or sqlite3 connection (asks the driver, sends nothing)."""
    if isinstance(dbapi_connection, psycopg2.extensions.connection):
        return dbapi_connection.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE
    return dbapi_connection.in_transaction


def json_dumps(value):
    return orjson.dumps(value).decode()


def threads_are_greenlets() -> bool:
    """Whether gevent has patched the standard library's threading (gunicorn's gevent worker does, before it
    loads the app)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")
