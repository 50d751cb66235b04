"""The task store: every statement this service runs on one user's tasks and time zone.

Rules every function here keeps:

- Every function the routes call takes the `Caller`, and every statement it
  runs on their data checks their session in its WHERE clause
  (`Caller.guarded`): a dead session finds nothing, as a missing task does,
  and the route's error then waits for the session's confirmation (see
  `auth.sessions`). A create or a time zone, which always find something for
  a live session, are refused with 401 when they find nothing.
- Every statement that touches a task filters by the caller's user id and the
  task's id in SQL (`_owned`); no row means 404, so a foreign task, a missing
  one and an id that cannot exist answer alike.
- A write to one task goes through `write_task`, which owns the two ways to
  write: first a single statement (UPDATE or DELETE ... RETURNING, If-Match
  checked in its WHERE clause, so nothing comes between check and change),
  else a transaction that locks the row, checks the version on it, applies
  the rules that span fields and creates a recurring task's next occurrence
  (once per occurrence: `_insert_next_occurrence`).
- Every write moves `updated_at`, the task's version, strictly forward
  (`tables.next_version`).
- Statements are built once: at import, or cached by what varies (the set of
  fields a PUT changes); SQLAlchemy then reuses their compiled form.

Due dates and reminders given without an offset are times on the user's wall
clock, in the time zone of their `user_settings` (UTC without a row): see
`timezones`. A create computes their instants in its one statement, which
reads the zone itself; an update, which needs a transaction anyway, reads the
zone there; statements that need no zone never read it.
"""

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import ValidationError
from sqlalchemy import DateTime, and_, bindparam, case, delete, exists, false, func, insert, not_, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import ColumnElement, Executable
from werkzeug.exceptions import NotFound, PreconditionFailed

from todo_api.auth.sessions import Caller, NotAuthenticated
from todo_api.db.connections import transaction
from todo_api.db.driver import run_on_driver
from todo_api.db.tables import MAX_TASK_ID, SHOWN_TASK_COLUMNS, next_version, task, user_settings
from todo_api.db.upsert import DIALECT_INSERTS, upsert_per_dialect
from todo_api.tasks.recurrence import RECURRING_NEEDS_DUE_DATE, next_occurrence
from todo_api.timezones import DEFAULT_TIME_ZONE, local_to_utc, utcnow, zone

Versions = frozenset[datetime] | None
"""What If-Match accepts: None for any version, else the `updated_at` values it names (empty: none can match)."""
Values = dict[str, Any]
"""Column name to value."""
Written = tuple[Row, Row | None]
"""A task as written, and the next occurrence that completing it created, if it created one."""


class NoSuchTask(NotFound):
    """A missing task and another user's task answer exactly alike."""

    description = "Task not found"


class StaleTask(PreconditionFailed):
    """If-Match named a version of the task that is no longer current."""

    description = "The task has changed since it was read (If-Match does not match its ETag); fetch it again"


# -- The owner's time zone -------------------------------------------------------


def time_zone_name_sql(owner) -> ColumnElement:
    """SQL: the name of the owner's time zone, UTC when they have set none."""
    chosen = select(user_settings.c.time_zone).where(user_settings.c.user_id == owner).scalar_subquery()
    return func.coalesce(chosen, DEFAULT_TIME_ZONE)


def local_to_utc_sql(zone_name, local) -> ColumnElement:
    """SQL: the UTC instant of a wall-clock time in a zone (`timezones` has the rule); NULL for NULL."""
    return func.todo_local_to_utc(zone_name, local, type_=DateTime)


_TIME_ZONE_NAME = select(time_zone_name_sql(bindparam("owner_id")))


def time_zone_name_of(db: Connection, caller: Caller) -> str:
    """The name of the caller's time zone."""
    name = db.execute(caller.guarded(_TIME_ZONE_NAME), caller.params).scalar_one_or_none()
    if name is None:
        raise NotAuthenticated()
    return name


def time_zone_of(db: Connection, user_id: str) -> ZoneInfo:
    """The user's zone, for an operation whose own statements check the caller's session."""
    return zone(db.execute(_TIME_ZONE_NAME, {"owner_id": user_id}).scalar_one())


@functools.lru_cache(maxsize=64)
def _store_time_zone(dialect: str, guard: ColumnElement):
    """Insert or replace the user's time zone, under `guard` (the caller's session): returns a row only then."""
    columns = [user_settings.c.user_id, user_settings.c.time_zone, user_settings.c.updated_at]
    given = select(
        bindparam("owner_id", type_=user_settings.c.user_id.type),
        bindparam("zone_name", type_=user_settings.c.time_zone.type),
        bindparam("now", type_=DateTime),
    ).where(guard)
    statement = DIALECT_INSERTS[dialect](user_settings).from_select(columns, given)
    return statement.on_conflict_do_update(
        index_elements=[user_settings.c.user_id],
        set_={"time_zone": statement.excluded.time_zone, "updated_at": statement.excluded.updated_at},
    ).returning(user_settings.c.user_id)


# Tasks on the wall clock keep their day and time in the new zone: their instants move.
_FOLLOW_TIME_ZONE = (
    update(task)
    .where(
        task.c.user_id == bindparam("owner_id"), or_(task.c.due_local.is_not(None), task.c.remind_local.is_not(None))
    )
    .values(
        due_date=func.coalesce(local_to_utc_sql(bindparam("zone_name"), task.c.due_local), task.c.due_date),
        remind_at=func.coalesce(local_to_utc_sql(bindparam("zone_name"), task.c.remind_local), task.c.remind_at),
    )
)


def change_time_zone(db: Connection, caller: Caller, zone_name: str) -> None:
    """Set the caller's time zone; in the same transaction, move the instants of their wall-clock tasks.

    Tasks given with an offset keep their instants. The tasks' shown values do
    not change, and neither do their versions (`updated_at`, the ETag).
    """
    params = {"owner_id": caller.user_id, "zone_name": zone_name}
    with transaction(db):
        upsert = _store_time_zone(db.dialect.name, caller.guard)
        if db.execute(upsert, {**caller.params, **params, "now": utcnow()}).first() is None:
            raise NotAuthenticated()
        db.execute(_FOLLOW_TIME_ZONE, params)


# -- Statements ------------------------------------------------------------------


def _owned(statement):
    return statement.where(task.c.id == bindparam("task_key"), task.c.user_id == bindparam("owner_id"))


_NEXT_VERSION = next_version(task.c.updated_at, bindparam("now", type_=DateTime))

# A create with a wall-clock due date or reminder: their instants are computed in the
# statement, in the owner's zone. `given_*` carry either an instant or a wall-clock time.
_OWNER_TIME_ZONE = time_zone_name_sql(bindparam("owner_id"))
_ON_THE_WALL_CLOCK = {
    "due_date": func.coalesce(
        bindparam("given_due_date", type_=DateTime),
        local_to_utc_sql(_OWNER_TIME_ZONE, bindparam("given_due_local", type_=DateTime)),
    ),
    "due_local": bindparam("given_due_local", type_=DateTime),
    "remind_at": func.coalesce(
        bindparam("given_remind_at", type_=DateTime),
        local_to_utc_sql(_OWNER_TIME_ZONE, bindparam("given_remind_local", type_=DateTime)),
    ),
    "remind_local": bindparam("given_remind_local", type_=DateTime),
}
_GIVEN = {name: f"given_{name}" for name in ("due_date", "due_local", "remind_at", "remind_local")}
_SELECT = _owned(select(*SHOWN_TASK_COLUMNS))
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
_DELETE = _owned(delete(task)).returning(task.c.id)
_NOT_RECURRING = task.c.recurrence_pattern.is_(None)
# A recurring task finds no row here, and takes the transaction that can create its next occurrence.
_TOGGLE_UNLESS_RECURRING = (
    _owned(update(task))
    .where(_NOT_RECURRING)
    .values(completed=not_(task.c.completed), updated_at=_NEXT_VERSION)
    .returning(*SHOWN_TASK_COLUMNS)
)


def _insert_next_occurrence(dialect_insert):
    """INSERT a recurring task's next occurrence (`recurrence.next_occurrence`'s values, `recurs_from` the task's
    id) unless the task has one; returns the row inserted, or none.

    The unique index on `recurs_from` is what guarantees one next occurrence per occurrence: a second insert for
    the same occurrence does nothing (ON CONFLICT), whatever the order of completions and reopenings. NOT EXISTS
    leaves the statement without a row to insert when the next occurrence exists, so that a completion that
    makes nothing does not take an id from the task table's sequence (Postgres draws it before it sees the
    conflict). The completing transaction holds the task's row lock, so the NOT EXISTS sees any next occurrence
    that another completion of the same task made.
    """
    columns = [column for column in task.c if column.name != "id"]
    made = task.alias("made")
    has_one = exists().where(made.c.recurs_from == bindparam("recurs_from"), made.c.user_id == bindparam("user_id"))
    values = select(*[bindparam(column.name, type_=column.type) for column in columns]).where(~has_one)
    statement = dialect_insert(task).from_select(columns, values)
    return statement.on_conflict_do_nothing(index_elements=[task.c.recurs_from]).returning(*SHOWN_TASK_COLUMNS)


_INSERT_NEXT_OCCURRENCE = upsert_per_dialect(_insert_next_occurrence)


@functools.lru_cache(maxsize=64)
def _insert_guarded(guard: ColumnElement, on_the_wall_clock: bool):
    """INSERT ... SELECT: the task is inserted only when `guard` (the caller's session) holds."""
    columns = [column for column in SHOWN_TASK_COLUMNS if column.name != "id"]
    given = _ON_THE_WALL_CLOCK if on_the_wall_clock else {}
    values = [given.get(column.name, bindparam(column.name, type_=column.type)) for column in columns]
    return insert(task).from_select(columns, select(*values).where(guard)).returning(*SHOWN_TASK_COLUMNS)


@functools.cache
def _update(fields: frozenset[str]):
    """UPDATE one task: the `fields` (bound by their names) and its next version; returns the row."""
    values = {name: bindparam(name, type_=task.c[name].type) for name in fields}
    return _owned(update(task)).values({**values, "updated_at": _NEXT_VERSION}).returning(*SHOWN_TASK_COLUMNS)


@functools.cache
def _update_unless_recurring(fields: frozenset[str]):
    return _update(fields).where(_NOT_RECURRING)


def _after(fields: frozenset[str], name: str) -> ColumnElement:
    """SQL: a column's value after an update of `fields`: the bound value if it changes, else the stored one."""
    return bindparam(name, type_=task.c[name].type) if name in fields else task.c[name]


@functools.cache
def _update_moving_the_reminder(fields: frozenset[str], recurrence_sent: bool):
    """UPDATE one task's `fields`, a due date or reminder among them, in one statement: `reminder_sent` clears
    in SQL when the reminder moves (`reminder_moved`'s rule). Unless the recurrence is sent (as null, so the task
    ends up not recurring), a recurring task finds no row and takes the transaction."""
    remind_at, due_date = _after(fields, "remind_at"), _after(fields, "due_date")
    moves = []
    if "remind_at" in fields:
        moves.append(remind_at.is_distinct_from(task.c.remind_at))
    if "due_date" in fields:
        moves.append(and_(remind_at.is_(None), due_date.is_distinct_from(task.c.due_date)))
    sent = case((or_(*moves), false()), else_=task.c.reminder_sent)
    values = {name: bindparam(name, type_=task.c[name].type) for name in fields}
    statement = _owned(update(task)).values({**values, "reminder_sent": sent, "updated_at": _NEXT_VERSION})
    statement = statement.returning(*SHOWN_TASK_COLUMNS)
    return statement if recurrence_sent else statement.where(_NOT_RECURRING)


@functools.cache
def _only_at_versions(statement):
    """The same write, applied only while the task's `updated_at` is one of `versions`: If-Match,
    checked in the write's own WHERE clause."""
    return statement.where(task.c.updated_at.in_(bindparam("versions", expanding=True)))


COMPLETED = frozenset({"completed"})
REMINDER_SENT = frozenset({"reminder_sent"})
# Fields whose change needs no look at the stored task when it does not recur: one statement.
SINGLE_STATEMENT_FIELDS = frozenset({"title", "description", "priority", "category", "tags", "completed"})
# Schedule fields that one statement can change too, when the task stays non-recurring and no value needs the
# user's zone (see `_single_statement_update`).
SCHEDULE_FIELDS = frozenset({"due_date", "due_all_day", "due_local", "remind_at", "remind_local", "recurrence_pattern"})


# -- Reading and writing one task -------------------------------------------------


def owned_row(
    db: Connection, statement: Executable, caller: Caller, task_id: int, params: Values | None = None
) -> Row | None:
    """The row that `statement`, which filters by task and owner (`_owned`), returns for this task of the
    caller's, under their session's check; None when there is none for them (an id beyond SERIAL's range is
    not even looked up)."""
    if not 0 < task_id <= MAX_TASK_ID:
        return None
    rows = run_on_driver(db, caller.guarded(statement), {"task_key": task_id, **caller.params, **(params or {})})
    return rows[0] if rows else None


def _found(row: Row | None) -> Row:
    if row is None:
        raise NoSuchTask()
    return row


def write_task(
    db: Connection,
    caller: Caller,
    task_id: int,
    versions: Versions,
    statement: Executable | None,
    params: Values,
    changes_for: Callable[[Row], Values] | None = None,
) -> Written:
    """Write one of the caller's tasks: a single statement when it can, else a transaction.

    `statement` (UPDATE or DELETE ... RETURNING, run with `params`) is tried
    first, under If-Match only while the task is at one of `versions`. It finds
    no row for a missing, foreign or stale task, and for a task it leaves to the
    transaction (a recurring one); when no tag can match, it is not even sent.
    Then, given `changes_for(current row) -> changes`, the transaction
    (`_write_locked`) decides; a write without one answers 412 if the task
    exists, else 404.
    """
    if statement is not None and (versions is None or versions):
        if versions is not None:
            statement, params = _only_at_versions(statement), {**params, "versions": list(versions)}
        row = owned_row(db, statement, caller, task_id, params)
        if row is not None:
            return row, None
    if changes_for is not None:
        return _write_locked(db, caller, task_id, versions, changes_for)
    if versions is not None and owned_row(db, _SELECT, caller, task_id) is not None:
        raise StaleTask()
    raise NoSuchTask()


def _write_locked(
    db: Connection, caller: Caller, task_id: int, versions: Versions, changes_for: Callable[[Row], Values]
) -> Written:
    """Change a task in one transaction, with its row locked and seen first.

    Checks If-Match's versions on the locked row, checks rules that span fields
    (a recurring task needs a due date), clears `reminder_sent` when the
    reminder moves (see `reminder_moved`), and when a recurring task becomes
    completed, creates its next occurrence unless it has one.
    """
    with transaction(db):
        current = _found(owned_row(db, _SELECT_FOR_UPDATE, caller, task_id))
        if versions is not None and current.updated_at not in versions:
            raise StaleTask()
        # Read after the row is locked, and only when needed: a zone change that
        # moved this task has committed by now, or waits for this transaction.
        time_zone = functools.cache(lambda: time_zone_of(db, caller.user_id))
        changes = on_the_wall_clock(changes_for(current), time_zone)
        after = {**current._mapping, **changes}
        if after["recurrence_pattern"] and after["due_date"] is None:
            raise ValidationError({"due_date": [RECURRING_NEEDS_DUE_DATE]})
        if reminder_moved(current, after):
            changes["reminder_sent"] = False
        if not changes:
            return current, None
        row = _found(owned_row(db, _update(frozenset(changes)), caller, task_id, {**changes, "now": utcnow()}))
        next_task = None
        if row.completed and not current.completed and row.recurrence_pattern:
            next_task = _make_next_occurrence(db, row, time_zone())
    return row, next_task


def _make_next_occurrence(db: Connection, row: Row, time_zone: ZoneInfo) -> Row | None:
    """Insert the next occurrence of `row`, a recurring task just completed: None when it has one already
    (made by an earlier completion), or when the series ends with the calendar (see `next_occurrence`)."""
    upcoming = next_occurrence(row, time_zone)
    if upcoming is None:
        return None
    rows = run_on_driver(db, _INSERT_NEXT_OCCURRENCE[db.dialect.name], upcoming)
    return rows[0] if rows else None


def reminder_moved(current: Row, after: Values) -> bool:
    """Whether a change moves the task's reminder: its `remind_at`, or, without one, the due date it is
    derived from (see `reminders.reminder_time`). A moved reminder is due again, so `reminder_sent` clears."""
    if after["remind_at"] != current.remind_at:
        return True
    return after["remind_at"] is None and after["due_date"] != current.due_date


def on_the_wall_clock(changes: Values, time_zone: Callable[[], ZoneInfo]) -> Values:
    """The changes, with the instants of wall-clock values computed in the user's zone.

    `time_zone()` gives the zone; it is called only when a change needs it.
    """
    for instant, local in (("due_date", "due_local"), ("remind_at", "remind_local")):
        if changes.get(local) is not None:
            changes = {**changes, instant: local_to_utc(changes[local], time_zone())}
    return changes


# -- The operations the routes call -----------------------------------------------


def create_task(db: Connection, caller: Caller, fields: Values, now: datetime | None = None) -> Row:
    """Insert a task of the caller's, if their session is live (else 401); `now` (naive UTC) is its creation
    time and first version, by default the clock's."""
    now = now or utcnow()
    values = {
        "description": None,
        "priority": "medium",
        "category": None,
        "tags": [],
        "due_date": None,
        "due_all_day": False,
        "due_local": None,
        "recurrence_pattern": None,
        "remind_at": None,
        "remind_local": None,
        **fields,
        "user_id": caller.user_id,
        "completed": False,
        "reminder_sent": False,
        "created_at": now,
        "updated_at": now,
    }
    on_the_wall_clock = values["due_local"] is not None or values["remind_local"] is not None
    if on_the_wall_clock:
        values = {_GIVEN.get(name, name): value for name, value in values.items()}
    rows = run_on_driver(db, _insert_guarded(caller.guard, on_the_wall_clock), {**values, **caller.params})
    if not rows:
        raise NotAuthenticated()
    return rows[0]


def get_task(db: Connection, caller: Caller, task_id: int) -> Row:
    return _found(owned_row(db, _SELECT, caller, task_id))


def update_task(db: Connection, caller: Caller, task_id: int, changes: Values, versions: Versions = None) -> Written:
    """Apply a partial update (only the fields sent change)."""
    statement = _single_statement_update(changes)
    params = {**changes, "now": utcnow()}
    return write_task(db, caller, task_id, versions, statement, params, lambda _: changes)


def _single_statement_update(changes: Values) -> Executable | None:
    """The one statement that applies `changes` when the task is or ends up non-recurring; None when the change
    needs the transaction (a recurrence set, a wall-clock value to place in the user's zone).

    The frontend's edit form sends every field, `due_date: null, recurrence_pattern: null` included: one
    statement. Its task may well recur (the form turns recurrence off); nothing then needs the stored row.
    """
    if not changes or not changes.keys() <= SINGLE_STATEMENT_FIELDS | SCHEDULE_FIELDS:
        return None
    if any(changes.get(name) is not None for name in ("recurrence_pattern", "due_local", "remind_local")):
        return None
    fields = frozenset(changes)
    if fields.isdisjoint(("due_date", "remind_at")):
        return _update(fields) if "recurrence_pattern" in fields else _update_unless_recurring(fields)
    return _update_moving_the_reminder(fields, "recurrence_pattern" in fields)


def toggle_task(db: Connection, caller: Caller, task_id: int, versions: Versions = None) -> Written:
    """Flip `completed`."""
    params = {"now": utcnow()}
    return write_task(db, caller, task_id, versions, _TOGGLE_UNLESS_RECURRING, params, _toggled)


def _toggled(current: Row) -> Values:
    return {"completed": not current.completed}


def set_task_completed(
    db: Connection, caller: Caller, task_id: int, completed: bool, versions: Versions = None
) -> Written:
    """Set `completed`, so a retried request cannot flip it back."""
    # Only completing creates an occurrence: marking a recurring task not done is one statement too.
    statement = _update_unless_recurring(COMPLETED) if completed else _update(COMPLETED)
    params = {"completed": completed, "now": utcnow()}
    return write_task(db, caller, task_id, versions, statement, params, lambda _: {"completed": completed})


def mark_reminder_sent(db: Connection, caller: Caller, task_id: int, versions: Versions = None) -> Row:
    params = {"reminder_sent": True, "now": utcnow()}
    return write_task(db, caller, task_id, versions, _update(REMINDER_SENT), params)[0]


def delete_task(db: Connection, caller: Caller, task_id: int, versions: Versions = None) -> None:
    write_task(db, caller, task_id, versions, _DELETE, {})
