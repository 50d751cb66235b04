"""The hot routes' statements, compiled once and run on psycopg2's cursor: `run_on_driver`.

A task GET's statement (with its session check) cost 214 µs of CPU per
execution through SQLAlchemy's and 135 µs here (`bench/hot_path.py --driver`,
medians of 5 rounds of 2,000): SQLAlchemy's work per execution is more than the
round trip the statement waits for. Everything else stays as SQLAlchemy does
it: the engine's cursor events fire (the statement timeout is added by one),
rows read alike, errors are SQLAlchemy's, and a connection that dropped is
invalidated.
"""

import functools
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable


def run_on_driver(db: Connection, statement: Executable, params: dict[str, Any]) -> list:
    """The rows of a statement built once (a SELECT, or a write with RETURNING), run with `params`.

    On Postgres it is compiled once (`_compiled`) and runs on psycopg2's cursor
    itself; a statement SQLAlchemy must render per call (an expanding IN, as
    If-Match's versions), and every statement on SQLite, is run by SQLAlchemy.
    """
    compiled = db.dialect.driver == "psycopg2" and _compiled(statement, db.dialect)
    if not compiled:
        return db.execute(statement, params).all()
    values = {**compiled.defaults, **params}
    for name, convert in compiled.conversions.items():
        values[name] = convert(values[name])
    sql, dbapi_connection = compiled.sql, db.connection.dbapi_connection
    events = db.engine.dispatch  # the engine's listeners (a Connection's own dispatch is built on first use)
    try:
        with dbapi_connection.cursor() as cursor:
            for hook in events.before_cursor_execute:
                sql, values = hook(db, cursor, sql, values, None, False)
            cursor.execute(sql, values)
            for hook in events.after_cursor_execute:
                hook(db, cursor, sql, values, None, False)
            return list(map(compiled.row_type._make, cursor.fetchall()))
    except psycopg2.Error as error:
        dropped = db.dialect.is_disconnect(error, dbapi_connection, None)
        if dropped:
            db.invalidate(error)
        raise DBAPIError.instance(
            sql, None, error, psycopg2.Error, hide_parameters=True, connection_invalidated=dropped
        ) from error


@dataclass(frozen=True)
class CompiledStatement:
    """A statement as psycopg2 runs it: its SQL, the values of the literals it binds itself, the conversions of
    the values it is given (JSON), and the type of its rows."""

    sql: str
    defaults: dict[str, Any]
    conversions: dict[str, Callable[[Any], Any]]
    row_type: type


@functools.lru_cache(maxsize=512)
def _compiled(statement: Executable, dialect: Dialect) -> CompiledStatement | None:
    """`statement` compiled for psycopg2; None for one that SQLAlchemy must render per call."""
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
    return CompiledStatement(compiled.string, defaults, conversions, _row_type(names))


def _row_type(names: list[str]) -> type:
    """Rows of these columns, read like SQLAlchemy's: `row.title`, `row[0]`, `row._mapping`."""
    base = namedtuple("DriverRow", names, rename=True)
    return type("DriverRow", (base,), {"__slots__": (), "_mapping": property(base._asdict)})
