"""Tables and the queries this service runs on them.

The `task` table keeps the reference backend's names and types (native enum
`taskpriority`, a `json` tags column, naive timestamps holding UTC), so the
service reads a database the reference created without migrating a row.

Every statement that touches a task filters by the caller's user id in SQL.
Statements are built once at import; SQLAlchemy caches their compiled form.
"""
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    not_,
    select,
    update,
)
from werkzeug.exceptions import NotFound

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
    sqlite_autoincrement=True,
)
task_indexes = [Index("ix_task_user_id_id", task.c.user_id, task.c.id)]


def utcnow():
    """Naive UTC, the form the reference's timestamp columns hold."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class NoSuchTask(NotFound):
    """A missing task and another user's task answer exactly alike."""

    description = "Task not found"


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
    """The one indexed query that turns a live session token into a user id.

    Expiry is checked by the database, against its own clock; connections run
    with timezone UTC, so an old Better Auth's naive `timestamp` column
    compares correctly too.
    """
    sessions = session_table(config, MetaData())
    return select(sessions.c[config["SESSION_USER_ID_COLUMN"]]).where(
        sessions.c[config["SESSION_TOKEN_COLUMN"]] == bindparam("token"),
        sessions.c[config["SESSION_EXPIRES_AT_COLUMN"]] > func.now(),
    )


# -- Task queries ------------------------------------------------------------


def _owned(statement):
    return statement.where(task.c.id == bindparam("task_key"), task.c.user_id == bindparam("owner_id"))


_LIST = select(task).where(task.c.user_id == bindparam("owner_id")).order_by(task.c.id.desc())
_INSERT = insert(task).returning(*task.c)
_SELECT = _owned(select(task))
_TOGGLE = _owned(update(task)).values(completed=not_(task.c.completed), updated_at=bindparam("now")).returning(*task.c)
_SET_COMPLETED = (
    _owned(update(task)).values(completed=bindparam("new_completed"), updated_at=bindparam("now")).returning(*task.c)
)
_DELETE = _owned(delete(task)).returning(task.c.id)


def owned_task(db, statement, user_id, task_id, **params):
    """Run a statement on one of the caller's tasks and return its row.

    The statement itself filters by task id and user id; no row means the task
    does not exist for this caller, which is a 404 whatever the reason.
    """
    if not 0 < task_id <= MAX_TASK_ID:
        raise NoSuchTask()
    row = db.execute(statement, {"task_key": task_id, "owner_id": user_id, **params}).first()
    if row is None:
        raise NoSuchTask()
    return row


def list_tasks(db, user_id):
    return db.execute(_LIST, {"owner_id": user_id}).all()


def create_task(db, user_id, fields):
    now = utcnow()
    values = {
        "description": None,
        "priority": "medium",
        "category": None,
        "tags": [],
        **fields,
        "user_id": user_id,
        "completed": False,
        "created_at": now,
        "updated_at": now,
    }
    return db.execute(_INSERT, values).one()


def get_task(db, user_id, task_id):
    return owned_task(db, _SELECT, user_id, task_id)


def update_task(db, user_id, task_id, changes):
    statement = _owned(update(task)).values(**changes, updated_at=utcnow()).returning(*task.c)
    return owned_task(db, statement, user_id, task_id)


def toggle_task(db, user_id, task_id):
    return owned_task(db, _TOGGLE, user_id, task_id, now=utcnow())


def set_task_completed(db, user_id, task_id, completed):
    return owned_task(db, _SET_COMPLETED, user_id, task_id, new_completed=completed, now=utcnow())


def delete_task(db, user_id, task_id):
    owned_task(db, _DELETE, user_id, task_id)


def create_schema(engine, config, with_auth_tables):
    """Create the task table and its indexes; and, for development and tests,
    Better Auth-compatible user and session tables. Existing tables are kept."""
    with engine.begin() as connection:
        metadata.create_all(connection)
        for index in task_indexes:
            index.create(connection, checkfirst=True)
        if with_auth_tables:
            auth_tables(config).create_all(connection)
