"""Tables and the queries this service runs on them.

The `task` table keeps the reference backend's names and types (native enum
`taskpriority`, a `json` tags column, naive timestamps holding UTC), so the
service reads a database the reference created without migrating a row. Its
schema is built by the migrations in `migrations/`; this module only queries.

Due dates and reminders given without an offset are times on the user's wall
clock, in the time zone of their `user_settings` (UTC without a row): see
`timezones`. A create computes their instants in its one statement, which
reads the zone itself; an update, which needs a transaction anyway, reads the
zone there; statements that need no zone never read it.

Every statement that touches a task filters by the caller's user id in SQL.
Statements are built once at import; SQLAlchemy caches their compiled form.
"""

import functools
from datetime import UTC, datetime

from dateutil.relativedelta import relativedelta
from marshmallow import ValidationError
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from werkzeug.exceptions import NotFound, PreconditionFailed

from . import token_digest
from .database import advanced, transaction, unexpired, upgrade
from .timezones import DEFAULT_TIME_ZONE, local_to_utc, utc_to_local, zone

PRIORITIES = ("low", "medium", "high")
# SERIAL is a 4-byte integer; larger ids cannot exist, so they are not looked up.
MAX_TASK_ID = 2**31 - 1

metadata = MetaData()

task = Table(
    "task",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", String, nullable=False),
    Column("title", String, nullable=False),
    Column("description", String),
    Column("completed", Boolean, nullable=False),
    Column("priority", Enum(*PRIORITIES, name="taskpriority"), nullable=False),
    Column("category", String),
    Column("tags", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("due_date", DateTime),
    Column("recurrence_pattern", String(10)),
    Column("remind_at", DateTime),
    Column("reminder_sent", Boolean, nullable=False),
    # Given without an offset: the wall-clock value as given (see migration 0007).
    Column("due_all_day", Boolean, nullable=False),
    Column("due_local", DateTime),
    Column("remind_local", DateTime),
)
RECURRENCE_PATTERNS = ("daily", "weekly", "monthly", "yearly")
RECURRING_NEEDS_DUE_DATE = "A recurring task needs a due date."

# A user's settings, keyed by Better Auth's user id; a user without a row has the defaults.
user_settings = Table(
    "user_settings",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("time_zone", Text, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# A browser's Web Push subscription: one row per endpoint, owned by one user at a time.
push_subscription = Table(
    "push_subscription",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("endpoint", String(2048), nullable=False, unique=True),
    Column("p256dh", Text, nullable=False),
    Column("auth", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# One reminder still to be pushed to one subscription (see `reminders`): created
# when the reminder comes due, deleted once the push service has taken it.
push_delivery = Table(
    "push_delivery",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("task.id", ondelete="CASCADE"), nullable=False),
    Column("subscription_id", Integer, ForeignKey("push_subscription.id", ondelete="CASCADE"), nullable=False),
    Column("remind_at", DateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime, nullable=False),
    Column("claim_token", String(32)),
    UniqueConstraint("task_id", "subscription_id", name="uq_push_delivery_task_subscription"),
)


def utcnow():
    """Naive UTC, the form the reference's timestamp columns hold."""
    return datetime.now(UTC).replace(tzinfo=None)


class NoSuchTask(NotFound):
    """A missing task and another user's task answer exactly alike."""

    description = "Task not found"


class StaleTask(PreconditionFailed):
    """If-Match named a version of the task that is no longer current."""

    description = "The task has changed since it was read (If-Match does not match its ETag); fetch it again"


# -- Better Auth's tables ---------------------------------------------------

auth_metadata = MetaData()

user = Table(
    "user",
    auth_metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("email", Text, nullable=False, unique=True),
    Column("emailVerified", Boolean, nullable=False),
    Column("image", Text),
    Column("createdAt", DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()),
    Column("updatedAt", DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()),
)


def session_table(config, metadata):
    """Better Auth's session table, under the names Better Auth was configured with.

    Only the columns this service reads are required by the lookup; the rest
    are declared so that `init-db` can create a Better Auth-compatible table
    for local development and tests.
    """
    return Table(
        config["SESSION_TABLE"],
        metadata,
        Column("id", Text, primary_key=True),
        Column(config["SESSION_EXPIRES_AT_COLUMN"], DateTime(timezone=True), nullable=False),
        Column(config["SESSION_TOKEN_COLUMN"], Text, nullable=False, unique=True),
        Column("createdAt", DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()),
        Column("updatedAt", DateTime(timezone=True), nullable=False),
        Column("ipAddress", Text),
        Column("userAgent", Text),
        Column(config["SESSION_USER_ID_COLUMN"], Text, ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
    )


def auth_tables(config):
    """Better Auth's user and session tables, as a MetaData of their own."""
    tables = MetaData()
    user.to_metadata(tables)
    session_table(config, tables)
    return tables


def session_lookup(config):
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


# -- Time zones ----------------------------------------------------------------


def time_zone_name_sql(owner):
    """SQL: the name of the owner's time zone, UTC when they have set none."""
    chosen = select(user_settings.c.time_zone).where(user_settings.c.user_id == owner).scalar_subquery()
    return func.coalesce(chosen, DEFAULT_TIME_ZONE)


def local_to_utc_sql(zone_name, local):
    """SQL: the UTC instant of a wall-clock time in a zone (`timezones` has the rule); NULL for NULL."""
    return func.todo_local_to_utc(zone_name, local, type_=DateTime)


_TIME_ZONE_NAME = select(time_zone_name_sql(bindparam("owner_id")))


def time_zone_name_of(db, user_id):
    return db.execute(_TIME_ZONE_NAME, {"owner_id": user_id}).scalar_one()


def time_zone_of(db, user_id):
    """The user's time zone, as a ZoneInfo."""
    return zone(time_zone_name_of(db, user_id))


def _store_time_zone(dialect_insert):
    statement = dialect_insert(user_settings).values(
        user_id=bindparam("owner_id"), time_zone=bindparam("zone_name"), updated_at=bindparam("now")
    )
    return statement.on_conflict_do_update(
        index_elements=[user_settings.c.user_id],
        set_={"time_zone": statement.excluded.time_zone, "updated_at": statement.excluded.updated_at},
    )


_STORE_TIME_ZONE = {"postgresql": _store_time_zone(postgresql.insert), "sqlite": _store_time_zone(sqlite.insert)}
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


def change_time_zone(db, user_id, zone_name):
    """Set the user's time zone; in the same transaction, move the instants of their wall-clock tasks.

    Tasks given with an offset keep their instants. The tasks' shown values do
    not change, and neither do their versions (`updated_at`, the ETag).
    """
    params = {"owner_id": user_id, "zone_name": zone_name}
    with transaction(db):
        db.execute(_STORE_TIME_ZONE[db.dialect.name], {**params, "now": utcnow()})
        db.execute(_FOLLOW_TIME_ZONE, params)


# -- Task queries ------------------------------------------------------------


def _owned(statement):
    return statement.where(task.c.id == bindparam("task_key"), task.c.user_id == bindparam("owner_id"))


@functools.cache
def _if_version(statement):
    """The same write, applied only while the task's `updated_at` is one of `versions`.

    This is how If-Match is checked: in the write's own WHERE clause, so no
    other write can come between the check and the change.
    """
    return statement.where(task.c.updated_at.in_(bindparam("versions", expanding=True)))


# Every write moves `updated_at` forward, strictly: it is the task's version.
_NEXT_UPDATED_AT = advanced(task.c.updated_at, bindparam("now", type_=DateTime))

_INSERT = insert(task).returning(*task.c)
# A create with a wall-clock due date or reminder: their instants are computed in the
# statement, in the owner's zone. `given_*` carry either an instant or a wall-clock time.
_OWNER_TIME_ZONE = time_zone_name_sql(bindparam("owner_id"))
_INSERT_ON_THE_WALL_CLOCK = (
    insert(task)
    .values(
        due_date=func.coalesce(
            bindparam("given_due_date", type_=DateTime),
            local_to_utc_sql(_OWNER_TIME_ZONE, bindparam("given_due_local", type_=DateTime)),
        ),
        due_local=bindparam("given_due_local", type_=DateTime),
        remind_at=func.coalesce(
            bindparam("given_remind_at", type_=DateTime),
            local_to_utc_sql(_OWNER_TIME_ZONE, bindparam("given_remind_local", type_=DateTime)),
        ),
        remind_local=bindparam("given_remind_local", type_=DateTime),
    )
    .returning(*task.c)
)
_GIVEN = {name: f"given_{name}" for name in ("due_date", "due_local", "remind_at", "remind_local")}
_SELECT = _owned(select(task))
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
# Fast paths for tasks that do not recur: one statement, no transaction. A
# recurring task (or a missing one) finds no row here and takes the slow path.
_TOGGLE_PLAIN = (
    _owned(update(task))
    .where(task.c.recurrence_pattern.is_(None))
    .values(completed=not_(task.c.completed), updated_at=_NEXT_UPDATED_AT)
    .returning(*task.c)
)
_SET_COMPLETED = _owned(update(task)).values(completed=bindparam("done"), updated_at=_NEXT_UPDATED_AT)
_SET_COMPLETED_PLAIN = _SET_COMPLETED.where(task.c.recurrence_pattern.is_(None)).returning(*task.c)
_SET_COMPLETED = _SET_COMPLETED.returning(*task.c)
_MARK_REMINDED = _owned(update(task)).values(reminder_sent=True, updated_at=_NEXT_UPDATED_AT).returning(*task.c)
_DELETE = _owned(delete(task)).returning(task.c.id)

RECURRENCE_STEPS = {
    "daily": relativedelta(days=1),
    "weekly": relativedelta(weeks=1),
    "monthly": relativedelta(months=1),
    "yearly": relativedelta(years=1),
}


def owned_task(db, statement, user_id, task_id, **params):
    """Run a statement on one of the caller's tasks and return its row.

    The statement itself filters by task id and user id; no row means the task
    does not exist for this caller, which is a 404 whatever the reason.
    """
    row = _run_owned(db, statement, user_id, task_id, **params)
    if row is None:
        raise NoSuchTask()
    return row


def _run_owned(db, statement, user_id, task_id, **params):
    if not 0 < task_id <= MAX_TASK_ID:
        return None
    return db.execute(statement, {"task_key": task_id, "owner_id": user_id, **params}).first()


def _write(db, statement, user_id, task_id, versions, **params):
    """Run a one-task write; with `versions` (If-Match), only while the task is at one of them.

    `versions` is None for an unconditional write, else the `updated_at` values
    the client's ETags name (empty when none of them can match). No row means
    missing, foreign, not at that version, or not for this fast path.
    """
    if versions is None:
        return _run_owned(db, statement, user_id, task_id, **params)
    if not versions:
        return None
    return _run_owned(db, _if_version(statement), user_id, task_id, versions=list(versions), **params)


def _refuse(db, user_id, task_id, versions):
    """Why a conditional write found no row: 412 if the caller's task exists, else 404."""
    if versions is not None and _run_owned(db, _SELECT, user_id, task_id) is not None:
        raise StaleTask()
    raise NoSuchTask()


def _written(db, statement, user_id, task_id, versions, **params):
    """A one-task write that has no slow path: its row, or 412/404 saying why there is none."""
    row = _write(db, statement, user_id, task_id, versions, **params)
    if row is None:
        _refuse(db, user_id, task_id, versions)
    return row


def _check_version(row, versions):
    if versions is not None and row.updated_at not in versions:
        raise StaleTask()


def create_task(db, user_id, fields):
    now = utcnow()
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
        "user_id": user_id,
        "completed": False,
        "reminder_sent": False,
        "created_at": now,
        "updated_at": now,
    }
    if values["due_local"] is None and values["remind_local"] is None:
        return db.execute(_INSERT, values).one()
    given = {_GIVEN.get(name, name): value for name, value in values.items()}
    return db.execute(_INSERT_ON_THE_WALL_CLOCK, {**given, "owner_id": user_id}).one()


def get_task(db, user_id, task_id):
    return owned_task(db, _SELECT, user_id, task_id)


# `versions` below: None, or the task versions (`updated_at` values) that If-Match
# accepts; a task at another version is left unchanged and answers 412.


def delete_task(db, user_id, task_id, versions=None):
    _written(db, _DELETE, user_id, task_id, versions)


def mark_reminder_sent(db, user_id, task_id, versions=None):
    return _written(db, _MARK_REMINDED, user_id, task_id, versions, now=utcnow())


def toggle_task(db, user_id, task_id, versions=None):
    """Flip `completed`; returns (task, next occurrence or None)."""
    row = _write(db, _TOGGLE_PLAIN, user_id, task_id, versions, now=utcnow())
    if row is not None:
        return row, None
    return change_task(db, user_id, task_id, lambda current: {"completed": not current.completed}, versions)


def set_task_completed(db, user_id, task_id, completed, versions=None):
    """Set `completed`, so a retried request cannot flip it back; returns (task, next occurrence or None)."""
    statement = _SET_COMPLETED_PLAIN if completed else _SET_COMPLETED
    row = _write(db, statement, user_id, task_id, versions, done=completed, now=utcnow())
    if row is not None:
        return row, None
    return change_task(db, user_id, task_id, lambda current: {"completed": completed}, versions)


# Fields whose change needs no look at the stored task when it does not recur.
PLAIN_FIELDS = frozenset({"title", "description", "priority", "category", "tags", "completed"})


def update_task(db, user_id, task_id, changes, versions=None):
    """Apply a partial update; returns (task, next occurrence or None)."""
    if changes and changes.keys() <= PLAIN_FIELDS:
        statement = _plain_update(frozenset(changes))
        row = _write(db, statement, user_id, task_id, versions, now=utcnow(), **changes)
        if row is not None:
            return row, None
    return change_task(db, user_id, task_id, lambda current: changes, versions)


@functools.cache
def _plain_update(fields):
    """One statement per set of changed fields, built once."""
    return (
        _owned(update(task))
        .where(task.c.recurrence_pattern.is_(None))
        .values({**{name: bindparam(name, type_=task.c[name].type) for name in fields}, "updated_at": _NEXT_UPDATED_AT})
        .returning(*task.c)
    )


def change_task(db, user_id, task_id, changes_for, versions=None):
    """Change a task in one transaction, seeing its current state first.

    Checks If-Match's versions on the locked row, checks rules that span fields
    (a recurring task needs a due date), clears `reminder_sent` when the
    reminder moves (see `reminder_moved`), and when a recurring task becomes completed, creates
    its next occurrence in the same transaction.
    """
    with transaction(db):
        current = owned_task(db, _SELECT_FOR_UPDATE, user_id, task_id)
        _check_version(current, versions)
        # Read after the row is locked, and only when needed: a zone change that
        # moved this task has committed by now, or waits for this transaction.
        time_zone = functools.cache(lambda: time_zone_of(db, user_id))
        changes = on_the_wall_clock(changes_for(current), time_zone)
        after = {**current._mapping, **changes}
        if after["recurrence_pattern"] and after["due_date"] is None:
            raise ValidationError({"due_date": [RECURRING_NEEDS_DUE_DATE]})
        if reminder_moved(current, after):
            changes["reminder_sent"] = False
        if not changes:
            return current, None
        statement = _owned(update(task)).values(**changes, updated_at=_NEXT_UPDATED_AT).returning(*task.c)
        row = owned_task(db, statement, user_id, task_id, now=utcnow())
        next_task = None
        if row.completed and not current.completed and row.recurrence_pattern:
            upcoming = next_occurrence(row, time_zone())
            if upcoming is not None:
                next_task = db.execute(_INSERT, upcoming).one()
    return row, next_task


def reminder_moved(current, after):
    """Whether a change moves the task's reminder: its `remind_at`, or, without one, the due date it is
    derived from (see `reminders.reminder_time`). A moved reminder is due again, so `reminder_sent` clears."""
    if after["remind_at"] != current.remind_at:
        return True
    return after["remind_at"] is None and after["due_date"] != current.due_date


def on_the_wall_clock(changes, time_zone):
    """The changes, with the instants of wall-clock values computed in the user's zone.

    `time_zone()` gives the zone; it is called only when a change needs it.
    """
    for instant, local in (("due_date", "due_local"), ("remind_at", "remind_local")):
        if changes.get(local) is not None:
            changes = {**changes, instant: local_to_utc(changes[local], time_zone())}
    return changes


def next_occurrence(row, time_zone):
    """The values of a recurring task's next occurrence.

    The due date moves on the wall clock of the user's zone, so a weekly 09:00
    stays 09:00 across daylight-saving changes, also for a task given with an
    offset (its instant is read in the zone, moved, and converted back); by
    calendar rules (31 January + 1 month is 28 or 29 February; 29 February + 1
    year is 28 February). An all-day task stays all day. A reminder keeps its
    wall-clock distance from the due date. None when it would fall past the
    calendar's end (the year 9999): the series ends there.
    """
    step = RECURRENCE_STEPS[row.recurrence_pattern]
    try:
        due_clock = row.due_local if row.due_local is not None else utc_to_local(row.due_date, time_zone)
        next_due_clock = due_clock + step
        due_date = local_to_utc(next_due_clock, time_zone)
        remind_at = remind_clock = None
        if row.remind_at is not None:
            remind_clock = row.remind_local if row.remind_local is not None else utc_to_local(row.remind_at, time_zone)
            remind_clock = next_due_clock + (remind_clock - due_clock)
            remind_at = local_to_utc(remind_clock, time_zone)
    except (ValueError, OverflowError):  # year 10000
        return None
    now = utcnow()
    return {
        "user_id": row.user_id,
        "title": row.title,
        "description": row.description,
        "completed": False,
        "priority": row.priority,
        "category": row.category,
        "tags": row.tags,
        "due_date": due_date,
        "due_all_day": row.due_all_day,
        "due_local": next_due_clock if row.due_local is not None else None,
        "recurrence_pattern": row.recurrence_pattern,
        "remind_at": remind_at,
        "remind_local": remind_clock if row.remind_local is not None else None,
        "reminder_sent": False,
        "created_at": now,
        "updated_at": now,
    }


def create_schema(engine, config, with_auth_tables):
    """Migrate the task table to the newest revision; and, for development and
    tests, create Better Auth-compatible user and session tables. Rows are kept.

    The auth tables come first, so the migrations find the session table and
    index its token digest, as they do on a database Better Auth made.
    """
    if with_auth_tables:
        with engine.begin() as connection:
            auth_tables(config).create_all(connection)
    upgrade(engine, app_config=config)
