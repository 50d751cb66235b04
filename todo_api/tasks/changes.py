"""Changes since a sync token: `GET /api/tasks/changes`.

A client that starts without a token and applies every answer in order
(upsert each task in `data`, drop each id in `deleted`) holds exactly the
caller's tasks as the server has them, whatever writers run at once and in
whatever order their transactions commit.

Where the changes come from: the `task_change` log, one row per task each
transaction changed, written by a trigger on `task` (migration 0010), so every
path that changes a task is counted. Each row carries its transaction's id
(`txid`). A read happens in one snapshot, and its token (`Position`) says what
the client has seen:

- on Postgres, `snapshot`: every row that snapshot could see was answered, so
  the next read takes the rows it could not see (`pg_visible_in_snapshot`):
  transactions still running then, or begun since, whatever their ids and
  whenever they commit. `low` (its xmin: every id below it was visible) keeps
  that read on the index.
- when an answer stops at `limit` (`has_more`), `after` is the (txid, task id)
  of its last row: the next read takes the rows after it too.

A row may be answered twice (a truncated page followed by rows its snapshot
could see); applying an answer twice changes nothing. SQLite has one writer at
a time and numbers its log rows in commit order: `after` alone is exact there.

The first read, without a token, answers the caller's tasks themselves, by id,
page by page (rows written before the log existed have no log rows); it
remembers the snapshot it started in, and the log is read from there on.

A token is signed and bound to its user; one older than SYNC_RETENTION_DAYS
(the log is purged past that) is 410: the client starts again from nothing.
"""

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, current_app
from itsdangerous import BadSignature, URLSafeSerializer
from marshmallow import ValidationError
from sqlalchemy import BigInteger, Integer, Text, bindparam, cast, delete, func, not_, or_, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.types import UserDefinedType
from werkzeug.exceptions import Gone

from todo_api.auth.sessions import Caller
from todo_api.db.tables import SHOWN_TASK_COLUMNS, task, task_change, task_change_counter
from todo_api.timezones import utcnow

EXTENSION = "todo_api.sync_tokens"
SYNC_SALT = "todo-api.sync-token"
TOKEN_VERSION = 1
LAST_TASK_ID = 2**31 - 1


class PostgresType(UserDefinedType):
    """A Postgres type SQLAlchemy has no name for, to cast to (`xid8`, `pg_snapshot`)."""

    cache_ok = True

    def __init__(self, name: str):
        self.name = name

    def get_col_spec(self, **_kw):
        return self.name


class SyncTokenExpired(Gone):
    description = "The sync token is older than the changes kept; sync again from the start, without `since`"


def invalid_token():
    return ValidationError({"since": ["Not a valid sync token."]})


@dataclass(frozen=True)
class Position:
    """Where a client's sync stands (see the module's docstring).

    `full_after`: during the first read, the last task id answered (None once the log is read).
    `since`: when `low` was set (unix seconds): the log before it may be purged after SYNC_RETENTION_DAYS.
    """

    low: int
    after: tuple[int, int]
    snapshot: str | None
    since: int
    full_after: int | None = None


@dataclass(frozen=True)
class Changes:
    tasks: list
    deleted: list[int]
    position: Position
    has_more: bool


class SyncTokens:
    """Signs positions into opaque tokens bound to their user, and checks them."""

    def __init__(self, secret: str, retention_days: int):
        self.serializer = URLSafeSerializer(secret, salt=SYNC_SALT)
        self.retention_seconds = retention_days * 24 * 3600

    @staticmethod
    def user_tag(user_id: str) -> str:
        return hashlib.sha256(user_id.encode()).hexdigest()[:16]

    def dump(self, user_id: str, position: Position) -> str:
        return self.serializer.dumps(
            [
                TOKEN_VERSION,
                self.user_tag(user_id),
                position.low,
                list(position.after),
                position.snapshot,
                position.since,
                position.full_after,
            ]
        )

    def load(self, token: str, user_id: str, now: float | None = None) -> Position:
        """The position a token holds; 422 naming `since` for one that is not the caller's, 410 when too old."""
        try:
            content = self.serializer.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise invalid_token() from None
        position = self._position(content, user_id)
        if (now or time.time()) - position.since > self.retention_seconds:
            raise SyncTokenExpired()
        return position

    def _position(self, content, user_id) -> Position:
        try:
            version, tag, low, after, snapshot, since, full_after = content
            txid, task_id = after
        except (TypeError, ValueError):
            raise invalid_token() from None
        integers = (low, txid, task_id, since) + ((full_after,) if full_after is not None else ())
        if (
            version != TOKEN_VERSION
            or tag != self.user_tag(user_id)
            or not all(type(value) is int and value >= 0 for value in integers)
            or not (snapshot is None or (isinstance(snapshot, str) and len(snapshot) < 100_000))
        ):
            raise invalid_token()
        return Position(low, (txid, task_id), snapshot, since, full_after)


def init_app(app: Flask, secret: str) -> None:
    app.extensions[EXTENSION] = SyncTokens(secret, app.config["SYNC_RETENTION_DAYS"])


def get_sync_tokens(app: Flask | None = None) -> SyncTokens:
    return (app or current_app).extensions[EXTENSION]


# -- Statements -------------------------------------------------------------------

_TASKS_FROM = (
    select(*SHOWN_TASK_COLUMNS)
    .where(task.c.user_id == bindparam("owner_id"), task.c.id > bindparam("after_id"))
    .order_by(task.c.id)
    .limit(bindparam("limit"))
)
_CURRENT_TASKS = select(*SHOWN_TASK_COLUMNS).where(
    task.c.user_id == bindparam("owner_id"), task.c.id.in_(bindparam("ids", expanding=True))
)
_AFTER = tuple_(task_change.c.txid, task_change.c.task_id) > tuple_(
    bindparam("after_txid", type_=BigInteger), bindparam("after_task", type_=Integer)
)
_LOG = (
    select(task_change.c.txid, task_change.c.task_id)
    .where(task_change.c.user_id == bindparam("owner_id"))
    .order_by(task_change.c.txid, task_change.c.task_id)
    .limit(bindparam("limit"))
)
_UNSEEN_IN_SNAPSHOT = not_(
    func.pg_visible_in_snapshot(
        cast(cast(task_change.c.txid, Text), PostgresType("xid8")),
        cast(bindparam("snapshot", type_=Text), PostgresType("pg_snapshot")),
    )
)
_LOG_POSTGRES = _LOG.where(
    task_change.c.txid >= bindparam("low", type_=BigInteger),
    or_(_AFTER, _UNSEEN_IN_SNAPSHOT),
)
_LOG_SQLITE = _LOG.where(_AFTER)
_SNAPSHOT_POSTGRES = select(
    cast(func.pg_current_snapshot(), Text).label("snapshot"),
    cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger).label("xmin"),
    cast(cast(func.pg_snapshot_xmax(func.pg_current_snapshot()), Text), BigInteger).label("xmax"),
)
_SNAPSHOT_SQLITE = select(task_change_counter.c.value)
_PURGE = delete(task_change).where(task_change.c.changed_at < bindparam("before"))


@contextmanager
def one_snapshot(db: Connection):
    """A read-only transaction whose statements all see one snapshot of the database."""
    if db.dialect.name == "sqlite":
        db.exec_driver_sql("BEGIN")
    else:
        db.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield db
    finally:
        db.exec_driver_sql("ROLLBACK")


def current_position(db: Connection, now: int | None = None) -> Position:
    """The log position of the snapshot `db` reads in: nothing after it has been seen."""
    now = now if now is not None else int(time.time())
    if db.dialect.name == "sqlite":
        counter = db.execute(_SNAPSHOT_SQLITE).scalar_one()
        return Position(0, (counter, LAST_TASK_ID), None, now)
    snapshot, xmin, xmax = db.execute(_SNAPSHOT_POSTGRES).one()
    return Position(xmin, (xmax, 0), snapshot, now)


def changes_since(db: Connection, caller: Caller, position: Position | None, limit: int) -> Changes:
    """The caller's changes after `position` (None: from the beginning), at most `limit` tasks and ids. The
    statement that finds them checks the caller's session: a dead one finds nothing."""
    now = int(time.time())
    with one_snapshot(db):
        if position is None:
            position = _first_read(current_position(db, now))
        if position.full_after is not None:
            return _read_tasks(db, caller, position, limit)
        return _read_log(db, caller, position, limit, now)


def _first_read(start: Position) -> Position:
    return Position(start.low, start.after, start.snapshot, start.since, full_after=0)


def _read_tasks(db, caller, position, limit) -> Changes:
    params = {**caller.params, "after_id": position.full_after, "limit": limit + 1}
    rows = db.execute(caller.guarded(_TASKS_FROM), params).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    if has_more:
        following = Position(position.low, position.after, position.snapshot, position.since, rows[-1].id)
    else:
        following = Position(position.low, position.after, position.snapshot, position.since)
    return Changes(rows, [], following, has_more)


def _read_log(db, caller, position, limit, now) -> Changes:
    postgres = db.dialect.name != "sqlite"
    params = {
        **caller.params,
        "after_txid": position.after[0],
        "after_task": position.after[1],
        "limit": limit + 1,
    }
    if postgres:
        params.update(low=position.low, snapshot=position.snapshot or "1:1:")
    entries = db.execute(caller.guarded(_LOG_POSTGRES if postgres else _LOG_SQLITE), params).all()
    has_more = len(entries) > limit
    entries = entries[:limit]
    ids = list(dict.fromkeys(entry.task_id for entry in entries))
    current = {}
    if ids:
        current = {row.id: row for row in db.execute(_CURRENT_TASKS, {"owner_id": caller.user_id, "ids": ids})}
    seen = current_position(db, now)
    if has_more:  # the rest follows the last row answered, or was not yet visible to this snapshot
        following = Position(position.low, tuple(entries[-1]), seen.snapshot, position.since)
    else:  # everything this snapshot sees was answered: next time, only what it could not see
        following = seen
    tasks = [current[task_id] for task_id in ids if task_id in current]
    deleted = [task_id for task_id in ids if task_id not in current]
    return Changes(tasks, deleted, following, has_more)


def purge_changes(db: Connection, retention_days: int) -> int:
    """Forget log rows older than the retention (their tokens are 410 by then); returns how many."""
    return db.execute(_PURGE, {"before": utcnow() - timedelta(days=retention_days)}).rowcount
