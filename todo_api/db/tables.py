"""Every table this service reads or writes, and the SQL constructs that belong to their columns.

The `task` table keeps the reference backend's names and types (native enum
`taskpriority`, a `json` tags column, naive timestamps holding UTC), so the
service reads a database the reference created without migrating a row. The
schema is built by the migrations in `migrations/` (see `migrate`); these
declarations only say what the queries may name. Better Auth owns its `user`
and session tables: they are declared as far as this service reads them, in a
MetaData of their own, so that migrations never touch them.

Each user's rows are keyed by Better Auth's user id, without a foreign key:
Better Auth may delete a user from a database this service does not write.
"""

from datetime import datetime, timedelta

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

# In the order they rank: a list sorted by priority descending starts with "high".
PRIORITIES = ("low", "medium", "high")
# SERIAL is a 4-byte integer; larger ids cannot exist, so they are not looked up.
MAX_TASK_ID = 2**31 - 1
MAX_IDEMPOTENCY_KEY_LENGTH = 255

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
    # The task's version (its ETag): every write sets it with `next_version`.
    Column("updated_at", DateTime, nullable=False),
    Column("due_date", DateTime),
    Column("recurrence_pattern", String(10)),
    Column("remind_at", DateTime),
    Column("reminder_sent", Boolean, nullable=False),
    # Given without an offset: the wall-clock value as given (see migration 0007).
    Column("due_all_day", Boolean, nullable=False),
    Column("due_local", DateTime),
    Column("remind_local", DateTime),
    # On a next occurrence: the id of the occurrence whose completion made it. A unique index holds it, so an
    # occurrence has one next occurrence at most (migration 0009). A plain id, without a foreign key.
    Column("recurs_from", Integer),
)
# The columns a task is read and shown with: all but `recurs_from`, which only the completion that makes a next
# occurrence names.
SHOWN_TASK_COLUMNS = tuple(column for column in task.c if column is not task.c.recurs_from)


class next_version(FunctionElement):
    """`next_version(updated_at, now)`: the later of `now` and `updated_at` plus one microsecond.

    A row's `updated_at` set this way moves forward on every write, even when two
    writes read the same microsecond from the clock (two workers at once) or the
    clock steps back, so a version derived from it (the ETag) changes on every
    write. It is evaluated on the row the write actually changes, under its lock.
    """

    type = DateTime()
    inherit_cache = True


NEXT_VERSION_SQLITE = "todo_next_version"


@compiles(next_version)
def _next_version_postgresql(element, compiler, **kw):
    updated_at, now = element.clauses
    return f"GREATEST({compiler.process(now, **kw)}, {compiler.process(updated_at, **kw)} + INTERVAL '1 microsecond')"


@compiles(next_version, "sqlite")
def _next_version_sqlite(element, compiler, **kw):
    return f"{NEXT_VERSION_SQLITE}({compiler.process(element.clauses, **kw)})"


def sqlite_next_version(stored, now):
    """SQLite's side of `next_version`: SQLite has no microsecond arithmetic on the
    text SQLAlchemy stores its timestamps as (`YYYY-MM-DD HH:MM:SS.ffffff`, a
    fixed width, so text order is time order)."""
    try:
        following = datetime.fromisoformat(stored) + timedelta(microseconds=1)
    except (TypeError, ValueError):
        return now
    return max(now, following.isoformat(sep=" ", timespec="microseconds"))


def register_sqlite_functions(dbapi_connection):
    dbapi_connection.create_function(NEXT_VERSION_SQLITE, 2, sqlite_next_version, deterministic=True)


# A retried `POST /api/tasks`'s first answer (see `idempotency`), kept 24 hours.
idempotency_key = Table(
    "idempotency_key",
    metadata,
    Column("user_id", String, primary_key=True),
    Column("key", String(MAX_IDEMPOTENCY_KEY_LENGTH), primary_key=True),
    Column("request_hash", String(64), nullable=False),  # SHA-256 of the request's fields, hex
    Column("task_id", Integer),  # the task created (no foreign key: deleting a task keeps its key)
    Column("response", Text),  # the response body, JSON; set in the claiming transaction
    # When the key was claimed, naive UTC: also the created task's first version (`updated_at`).
    Column("created_at", DateTime, nullable=False),
)

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


# The task change log (see migration 0010 and `tasks.changes`): written by a trigger on `task`, never by a
# statement of ours. `task_change_counter` is SQLite's commit-ordered counter for it (unused on Postgres).
task_change = Table(
    "task_change",
    metadata,
    Column("user_id", String, primary_key=True),
    Column("txid", BigInteger, primary_key=True),
    Column("task_id", Integer, primary_key=True),
    Column("changed_at", DateTime, nullable=False),
)
task_change_counter = Table("task_change_counter", metadata, Column("value", BigInteger, nullable=False))


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
