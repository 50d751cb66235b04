"""Plain helpers the tests share; fixtures live in tests/conftest.py.

`from support import base_config, user_id_of` in a test module. The services
the tests start themselves have modules of their own here: `pgbouncer` (a
PgBouncer in transaction mode), `private_postgres` (a Postgres cluster a test
may stop and crash), `push_service` (a Web Push service on 127.0.0.1), and
`jsdate` (how the next frontend's browser code reads dates).
"""

import contextlib
import os
import pwd
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, delete, event, select, text, update
from sqlalchemy.engine import make_url

from todo_api.db.connections import get_engine
from todo_api.db.engine import normalize_url
from todo_api.db.tables import auth_tables

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-of-reasonable-length-0123456789"


def base_config(database_url, **overrides):
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        # Migrations run on DATABASE_URL unless a test says otherwise: a developer's own setting is never used.
        "DATABASE_MIGRATION_URL": None,
        "BETTER_AUTH_SECRET": None,
        "CORS_ORIGINS": ["http://localhost:3000"],
        # Rate limits and the bounds on one user's requests in progress stay on at their defaults, counted in
        # memory: a developer's REDIS_URL is never used.
        "REDIS_URL": None,
        **overrides,
    }


def free_port():
    """A loopback port nothing listens on (until something the test starts binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Postgres and PgBouncer refuse to run as root: a suite running as root runs them as this OS user.
SERVER_USER = "postgres"


def missing_server_user(program):
    """Why `program` cannot run here for want of an OS user to run it as, or None."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} OS user to run {program} as"
    return None


def as_server_user(*paths):
    """When running as root: hand `paths` to SERVER_USER, and return the `subprocess` arguments that run a
    program as it. Otherwise nothing changes hands, and the arguments are none."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam(SERVER_USER)
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


# -- Sessions ------------------------------------------------------------------


def sessions_of(app):
    return auth_tables(app.config).tables[app.config["SESSION_TABLE"]]


def user_id_of(app, token):
    sessions = sessions_of(app)
    with get_engine(app).connect() as connection:
        return connection.execute(select(sessions.c.userId).where(sessions.c.token == token)).scalar_one()


def expire_session(app, token):
    sessions = sessions_of(app)
    past = datetime.now(UTC) - timedelta(seconds=1)
    with get_engine(app).begin() as connection:
        connection.execute(update(sessions).where(sessions.c.token == token).values(expiresAt=past))


def delete_session(app, token):
    sessions = sessions_of(app)
    with get_engine(app).begin() as connection:
        connection.execute(delete(sessions).where(sessions.c.token == token))


# -- The database ----------------------------------------------------------------


@contextlib.contextmanager
def throwaway_database(admin_url, prefix, *settings):
    """A new, empty Postgres database named `<prefix>_<random>` on admin_url's server: its URL, and on leaving, the
    database dropped, connections and all. `settings` are `ALTER DATABASE ... SET` clauses ("timezone TO 'UTC'")."""
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            with admin.connect() as connection:
                for setting in settings:
                    connection.execute(text(f'ALTER DATABASE "{name}" SET {setting}'))
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


TRUNCATED = (
    "task",
    "task_change",
    "idempotency_key",
    "user_settings",
    "push_subscription",
    "push_delivery",
    '"session"',
    '"user"',
)


def truncate_postgres(engine):
    with engine.connect() as connection, connection.execution_options(statement_timeout_ms=0).begin():
        connection.execute(text(f"TRUNCATE {', '.join(TRUNCATED)} RESTART IDENTITY CASCADE"))


class StatementLog:
    """The first word of each SQL statement an engine runs (after the statement timeout each one carries)."""

    TIMEOUT_PREFIX = re.compile(r"SET LOCAL statement_timeout = \d+; ")

    def __init__(self, app):
        self.engine, self.statements = get_engine(app), []
        event.listen(self.engine, "before_cursor_execute", self.record)

    def record(self, _connection, _cursor, statement, *_args):
        self.statements.append(self.TIMEOUT_PREFIX.sub("", statement, count=1).split()[0].upper())

    def close(self):
        event.remove(self.engine, "before_cursor_execute", self.record)


# -- Tasks -------------------------------------------------------------------------

# The task table's columns as the reference backend made them (migration 0001); the API's task has these and the
# ones later migrations added.
REFERENCE_TASK_COLUMNS = frozenset(
    {
        "id",
        "user_id",
        "title",
        "description",
        "completed",
        "priority",
        "category",
        "tags",
        "created_at",
        "updated_at",
    }
)
# A create body that sets every field a plain task has: a due date with microseconds and an offset, a reminder in UTC.
FULL_TASK = {
    "title": "full",
    "description": "d",
    "priority": "high",
    "category": "c",
    "tags": ["a", "b"],
    "due_date": "2026-02-28T23:59:59.999999+05:00",
    "remind_at": "2026-02-28T12:00:00Z",
}

EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)


def naive_utc(value):
    return datetime.fromisoformat(value).replace(tzinfo=None)


def expected_etag(task):
    return f'"{task["id"]}-{(naive_utc(task["updated_at"]) - EPOCH) // MICROSECOND}"'


def fetch(client, auth, task_id):
    response = client.get(f"/api/tasks/{task_id}", headers=auth)
    assert response.status_code == 200
    return response.get_json()["data"], response.headers["ETag"]
