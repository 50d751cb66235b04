"""The database engine, the per-request connection, transactions, and retrying once.

Every request that needs the database uses its thread's connection (`get_db`):
checked out of the pool on a thread's first request and kept from one request
to the next (`ThreadConnections`), so no request pays for a checkout and a
check-in; it ends every request outside any transaction. Connections run in
autocommit mode: nearly every operation of this service is a single
statement (the toggle is one `UPDATE ... RETURNING`), so there is no BEGIN or
COMMIT round trip to pay, and nothing half-done can be left behind; the few
that change several rows together say so with `transaction`.

No ping precedes a checkout: a connection from before a database restart is
found dead by the request's first statement, which runs again once on a fresh
connection (`execute_retrying_once`). Schema changes are `migrate`'s.
"""

import functools
import os
import select
import sys
import threading
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import psycopg2.extensions
from flask import Flask
from sqlalchemy import create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from . import tables, timezones, token_digest
from .state import get_engine, get_thread_connections

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
    every statement as text), no temporary tables, no advisory locks.
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
# One query string: the setting is made in the transaction's first statement, with no timeout of its own.
BEGIN_WITH_SETTING = "BEGIN; SELECT set_config(%(name)s, %(value)s, true)"


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


@contextmanager
def transaction(connection: Connection, setting: tuple[str, str] | None = None) -> Iterator[Connection]:
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
    if in_transaction(dbapi_connection):
        with dbapi_connection.cursor() as cursor:  # rollback() is a no-op in autocommit mode
            cursor.execute("ROLLBACK")


def json_dumps(value):
    return orjson.dumps(value).decode()


# Each database's INSERT construct with ON CONFLICT (Postgres and SQLite spell the upsert alike).
DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def per_dialect(build):
    """`{dialect name: build(insert)}`: a statement that needs the dialect's INSERT, built once for each."""
    return {name: build(insert) for name, insert in DIALECT_INSERTS.items()}


@dataclass(frozen=True)
class DriverStatement:
    """A statement as psycopg2 runs it: its SQL, the values of the literals it binds itself, the conversions of
    the values it is given (JSON), and the type of its rows."""

    sql: str
    defaults: dict[str, Any]
    conversions: dict[str, Callable[[Any], Any]]
    row_type: type


def row_type(names: list[str]) -> type:
    """Rows of these columns, read like SQLAlchemy's: `row.title`, `row[0]`, `row._mapping`."""
    base = namedtuple("DriverRow", names, rename=True)
    return type("DriverRow", (base,), {"__slots__": (), "_mapping": property(base._asdict)})


@functools.lru_cache(maxsize=512)
def for_driver(statement: Executable, dialect: Dialect) -> DriverStatement | None:
    """`statement` compiled once for psycopg2; None for one that SQLAlchemy must render per call (an expanding
    IN, as If-Match's versions)."""
    compiled = statement.compile(dialect=dialect)
    if compiled.post_compile_params:
        return None
    binds = compiled.bind_names  # bound parameter -> its name in the SQL
    defaults = {name: bind.effective_value for bind, name in binds.items() if not bind.required}
    conversions = {
        name: convert
        for bind, name in binds.items()
        if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect))
    }
    names = [column.key for column in statement.exported_columns]
    return DriverStatement(compiled.string, defaults, conversions, row_type(names))


def fetch(db: Connection, statement: Executable, params: dict[str, Any]) -> list:
    """The rows of a statement built once (a SELECT, or a write with RETURNING), run with `params`.

    On Postgres it is compiled once (`for_driver`) and runs on psycopg2's cursor
    itself: these are the hot routes' statements, for which SQLAlchemy's work
    per execution cost more than the database round trip. Everything else stays
    as SQLAlchemy does it: the engine's cursor events fire (the statement
    timeout is added by one), rows read alike, errors are SQLAlchemy's, and a
    connection that dropped is invalidated. Elsewhere (SQLite), SQLAlchemy runs it.
    """
    prepared = db.dialect.driver == "psycopg2" and for_driver(statement, db.dialect)
    if not prepared:
        return db.execute(statement, params).all()
    values = {**prepared.defaults, **params}
    for name, convert in prepared.conversions.items():
        values[name] = convert(values[name])
    sql, dbapi_connection = prepared.sql, db.connection.dbapi_connection
    events = db.engine.dispatch  # the engine's listeners (a Connection's own dispatch is built on first use)
    try:
        with dbapi_connection.cursor() as cursor:
            for hook in events.before_cursor_execute:
                sql, values = hook(db, cursor, sql, values, None, False)
            cursor.execute(sql, values)
            for hook in events.after_cursor_execute:
                hook(db, cursor, sql, values, None, False)
            return list(map(prepared.row_type._make, cursor.fetchall()))
    except psycopg2.Error as error:
        dropped = db.dialect.is_disconnect(error, dbapi_connection, None)
        if dropped:
            db.invalidate(error)
        raise DBAPIError.instance(
            sql, None, error, psycopg2.Error, hide_parameters=True, connection_invalidated=dropped
        ) from error


class ThreadConnections:
    """Each thread's pooled connection, kept from one request to the next.

    A checkout and a check-in cost more than a task route's own statement
    (SQLAlchemy joins the engine's events on every new `Connection`), and a
    serving thread needs a connection for nearly every request anyway. Between
    requests a kept connection is idle and outside any transaction
    (`end_request`), as it would be in the pool. Threads keep fewer connections
    than the pool holds open (DATABASE_POOL_SIZE): past that, a thread gives
    its connection back after each request, so one is always in reach of the
    others, and of work done outside requests (a readiness ping). One that failed is given back
    (`release`); so is a thread's when the thread ends, and every one when the
    engine is disposed.

    Under gunicorn's gevent worker each client connection is served by a
    greenlet of its own, and `threading.local` is per greenlet: a connection
    kept there would sit idle while its client thinks, so each request gives
    its connection back at its end instead (`keep_between_requests`).
    """

    def __init__(self, engine: Engine):
        self.engine, self.local, self.holders = engine, threading.local(), weakref.WeakSet()
        self.keep_between_requests = not threads_are_greenlets()
        event.listen(engine, "engine_disposed", lambda _engine: self.release_all())

    def get(self) -> Connection:
        holder = getattr(self.local, "holder", None)
        if holder is None or holder.connection.closed:
            holder = self.local.holder = Holder(self.engine.connect())
            weakref.finalize(holder, holder.connection.close)  # the thread ended, or its connection was replaced
            self.holders.add(holder)
        return holder.connection

    def release(self) -> None:
        """Give this thread's connection back to the pool (a dead one is discarded there)."""
        holder = getattr(self.local, "holder", None)
        if holder is not None:
            self.local.holder = None
            holder.connection.close()

    def release_all(self) -> None:
        for holder in list(self.holders):
            holder.connection.close()

    def end_request(self) -> None:
        """A request's end: the thread's connection is left outside any transaction, or given back (see above)."""
        holder = getattr(self.local, "holder", None)
        if holder is None:
            return
        connection = holder.connection
        if not self.keep_between_requests or connection.invalidated or connection.closed or self.pool_is_short():
            self.release()
        elif in_transaction(connection.connection.dbapi_connection):
            try:
                connection.exec_driver_sql("ROLLBACK")
            except DBAPIError:
                self.release()

    def pool_is_short(self) -> bool:
        """As many connections are checked out as the pool keeps open (or more: its overflow)."""
        pool = self.engine.pool
        checked_out = getattr(pool, "checkedout", None)
        return checked_out is not None and checked_out() >= pool.size()


def threads_are_greenlets() -> bool:
    """Whether gevent has patched the standard library's threading (gunicorn's gevent worker does, before it
    loads the app)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


class Holder:
    """A thread's connection, in the thread's local storage: closed (back to the pool) when the thread ends."""

    __slots__ = ("connection", "__weakref__")

    def __init__(self, connection: Connection):
        self.connection = connection


def in_transaction(dbapi_connection) -> bool:
    """Whether a transaction is open on this psycopg2 or sqlite3 connection (asks the driver, sends nothing)."""
    if isinstance(dbapi_connection, psycopg2.extensions.connection):
        return dbapi_connection.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE
    return dbapi_connection.in_transaction


def get_db() -> Connection:
    """The request's connection: its thread's (see `ThreadConnections`)."""
    return get_thread_connections().get()


def close_db() -> None:
    """Give the thread's connection back, after it failed: the next `get_db()` checks out another."""
    get_thread_connections().release()


def end_request(_exc: BaseException | None = None) -> None:
    get_thread_connections().end_request()


Result = TypeVar("Result")


# SQLSTATE class 57P: the server ended the session (shutdown, termination) before or while running the
# statement, so nothing of it was committed; a write that failed so may run again.
SERVER_ENDED_SESSION = "57P"


def run_with_retry(
    attempt: Callable[[], Result], before_retry: Callable[[], None] | None = None, writes: bool = False
) -> Result:
    """`attempt()`, and once more if it failed on a dead connection (one the pool kept from before a database
    restart); SQLAlchemy has then discarded the pool's other connections from before the drop.

    An attempt that `writes` runs again only when the server said it ended the session: a connection that
    merely went silent may have committed the write before it did."""
    try:
        return attempt()
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        if writes and not (getattr(error.orig, "pgcode", None) or "").startswith(SERVER_ENDED_SESSION):
            raise
    if before_retry is not None:
        before_retry()
    return attempt()


def execute_retrying_once(statement: Executable, params: dict[str, Any]) -> CursorResult:
    """Run a request's first, read-only statement on its connection; on a dead one, once more on a fresh one.

    This gives what `pool_pre_ping` gives, without a ping's round trip on every
    request: a dropped connection is found by the query itself.
    """
    return run_with_retry(lambda: get_db().execute(statement, params), before_retry=close_db)


def on_live_connection(operation: Callable[[Connection], Result], writes: bool = False) -> Result:
    """`operation(request's connection)`; on a dead one, once more on a fresh one (see `run_with_retry`).

    The task routes' statements are their requests' first (they check the session themselves), so they take
    the place of the session lookup in `execute_retrying_once`. Before a write, a connection the server has
    closed (after a restart) is found without a round trip (`closed_by_server`) and replaced.
    """
    if writes:
        db = get_db()
        if closed_by_server(db):
            db.invalidate()
            close_db()
    return run_with_retry(lambda: operation(get_db()), before_retry=close_db, writes=writes)


def closed_by_server(connection: Connection) -> bool:
    """Whether the server has spoken on this idle connection, which it does only to close it (this service
    listens for no notifications): its socket is readable. Asks the kernel, sends nothing."""
    dbapi_connection = connection.connection.dbapi_connection
    if not isinstance(dbapi_connection, psycopg2.extensions.connection):
        return False
    if dbapi_connection.closed:
        return True
    readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    return bool(readable)


def ping() -> None:
    """Check that the database answers, on a fresh connection if a kept one is dead: a readiness probe must not
    report an outage that is over."""
    run_with_retry(_select_one)


def _select_one() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def init_app(app: Flask) -> None:
    """End each request outside any transaction (the engine and its connections are in the app's `AppState`)."""
    app.teardown_appcontext(end_request)
