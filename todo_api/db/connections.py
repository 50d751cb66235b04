"""The app's engine and a request's connection: `init_app`, `get_engine`, `get_db`, `transaction`, and
`run_retrying_once`, the one way a request runs its database work.

Every request that needs the database uses its thread's connection (`get_db`):
checked out of the pool on a thread's first request and kept from one request
to the next (`ThreadConnections`), so no request pays for a checkout and a
check-in; it ends every request outside any transaction. Connections are in
autocommit mode (see `engine`); the few operations that change several rows
together say so with `transaction`.

No ping precedes a checkout: a connection from before a database restart is
found dead by the request's first statement, which runs again once on a fresh
connection (`run_retrying_once`). Schema changes are `migrate`'s.
"""

import select
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import psycopg2.extensions
from flask import Flask, current_app
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from todo_api.db.engine import build_engine, in_transaction, threads_are_greenlets

_EXTENSION = "todo_api.db"


@dataclass(frozen=True)
class Database:
    engine: Engine  # DATABASE_URL's pool
    connections: "ThreadConnections"  # each thread's connection from that pool


def init_app(app: Flask) -> None:
    """Build the engine for DATABASE_URL; end each request outside any transaction."""
    engine = build_engine(app.config, app.instance_path)
    app.extensions[_EXTENSION] = Database(engine, ThreadConnections(engine))
    app.teardown_appcontext(_end_request)


def get_engine(app: Flask | None = None) -> Engine:
    return (app or current_app).extensions[_EXTENSION].engine


def get_db() -> Connection:
    """The request's connection: its thread's (see `ThreadConnections`)."""
    return _thread_connections().get()


def release_db() -> None:
    """Give the request's connection back to the pool now (a request about to wait a while holds none); the next
    `get_db()` takes one again."""
    _thread_connections().release()


def _thread_connections() -> "ThreadConnections":
    return current_app.extensions[_EXTENSION].connections


def _end_request(_exc: BaseException | None = None) -> None:
    _thread_connections().end_request()


class ThreadConnections:
    """Each thread's pooled connection, kept from one request to the next.

    A checkout and a check-in cost more than a task route's own statement
    (SQLAlchemy joins the engine's events on every new `Connection`), and a
    serving thread needs a connection for nearly every request anyway. Between
    requests a kept connection is idle and outside any transaction
    (`end_request`), as it would be in the pool. Threads keep fewer connections
    than the pool holds open (DATABASE_POOL_SIZE): past that, a thread gives
    its connection back after each request, so one is always in reach of the
    others. One that failed is given back (`release`); so is a thread's when
    the thread ends, and every one when the engine is disposed.

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


class Holder:
    """A thread's connection, in the thread's local storage: closed (back to the pool) when the thread ends."""

    __slots__ = ("connection", "__weakref__")

    def __init__(self, connection: Connection):
        self.connection = connection


# -- Transactions ------------------------------------------------------------------

# One query string: the setting is made in the transaction's first statement, with no timeout of its own.
BEGIN_WITH_SETTING = "BEGIN; SELECT set_config(%(name)s, %(value)s, true)"


@contextmanager
def transaction(connection: Connection, setting: tuple[str, str] | None = None) -> Iterator[Connection]:
    """A real transaction on this service's autocommit connections.

    Most requests are one statement and need none; the few that must change
    several rows together (completing a recurring task) open one explicitly.
    SQLite takes its write lock up front, so a read inside cannot go stale.
    Inside a transaction already open on the connection (a batch of writes),
    it opens none: the outer one commits or rolls back everything together.

    `setting`, a (name, value) pair (Postgres only), is set for this transaction
    alone, in the same round trip as BEGIN: statements inside read the value with
    `current_setting(name)`, so it is not in their text, which Postgres writes
    to its log when a statement fails. A transaction pooler keeps it on one
    server connection, and it ends with the transaction.
    """
    if in_transaction(connection.connection.dbapi_connection):
        yield connection
        return
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


# -- Retrying once on a dropped connection -------------------------------------------

Result = TypeVar("Result")

# SQLSTATE class 57P: the server ended the session (shutdown, termination) before or while running the
# statement, so nothing of it was committed; a write that failed so may run again.
SERVER_ENDED_SESSION = "57P"


def run_retrying_once(operation: Callable[[Connection], Result], *, writes: bool) -> Result:
    """`operation(the request's connection)`, and once more on a fresh connection when it failed because that
    connection had dropped (one the pool kept from before a database restart; SQLAlchemy has then discarded the
    pool's other connections from before the drop).

    This gives what `pool_pre_ping` gives without a ping's round trip on every request: a dropped connection is
    found by the request's own first statement. An operation that `writes` runs again only when the server said
    it ended the session: a connection that merely went silent may have committed the write before it did.
    Before a write, a connection the server has closed is found without a round trip and replaced.
    """
    connections = _thread_connections()
    db = connections.get()
    if writes and closed_by_server(db):
        db.invalidate()
        connections.release()
        db = connections.get()
    try:
        return operation(db)
    except DBAPIError as error:
        if not error.connection_invalidated or (writes and not server_ended_session(error)):
            raise
    connections.release()
    return operation(connections.get())


def server_ended_session(error: DBAPIError) -> bool:
    return (getattr(error.orig, "pgcode", None) or "").startswith(SERVER_ENDED_SESSION)


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
