"""A Postgres database made by the reference backend and Better Auth is adopted as it stands.

Each test gets a fresh database of its own, built by hand the way the reference
(and Better Auth) built it, not by this service. The database's time zone is far
from UTC, so a naive timestamp read in the wrong zone would show.
"""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from support import ADMIN_URL, base_config, throwaway_database
from todo_api import create_app
from todo_api.db.connections import get_engine
from todo_api.db.engine import normalize_url

# Verbatim from the reference: SQLModel 0.0.24 on PostgreSQL 15, and Better Auth 1.7's tables.
REFERENCE_SCHEMA = """
CREATE TYPE taskpriority AS ENUM ('low', 'medium', 'high');
CREATE TABLE task (
    id SERIAL PRIMARY KEY,
    user_id character varying NOT NULL,
    title character varying NOT NULL,
    description character varying,
    completed boolean NOT NULL,
    priority taskpriority NOT NULL,
    category character varying,
    tags json NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);
CREATE INDEX ix_task_user_id ON task USING btree (user_id);
"""
USER_TABLE = """
CREATE TABLE "user" (
    id text PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    "emailVerified" boolean NOT NULL,
    image text,
    "createdAt" timestamp with time zone NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" timestamp with time zone NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO "user" (id, name, email, "emailVerified") VALUES ('ref-user', 'Ref', 'ref@example.com', false);
"""
SESSION_TABLE = """
CREATE TABLE "session" (
    id text PRIMARY KEY,
    "expiresAt" timestamp {zone} time zone NOT NULL,
    token text NOT NULL UNIQUE,
    "createdAt" timestamp with time zone NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" timestamp with time zone NOT NULL,
    "ipAddress" text,
    "userAgent" text,
    "userId" text NOT NULL REFERENCES "user"(id) ON DELETE CASCADE
);
CREATE INDEX "session_userId_idx" ON "session" ("userId");
"""
INSERT_SESSION = """INSERT INTO "session" (id, "expiresAt", token, "updatedAt", "userId")
                    VALUES (:token, :expires_at, :token, now(), 'ref-user')"""
INSERT_REFERENCE_TASK = """
INSERT INTO task (user_id, title, description, completed, priority, category, tags, created_at, updated_at)
VALUES ('ref-user', 'From the reference', 'made by SQLModel', false, 'high', 'work', '["x","y"]',
        '2025-01-02 03:04:05.678901', '2025-01-02 03:04:05.678901')
RETURNING id
"""
LIVE_TOKEN = "L" * 32


@pytest.fixture
def fresh_database(postgres_url):
    """A new, empty Postgres database (postgres_url only proves the server is there)."""
    with throwaway_database(ADMIN_URL, "todo_api_reference", "timezone TO 'Pacific/Honolulu'") as url:
        engine = create_engine(normalize_url(url))
        yield url, engine
        engine.dispose()


@pytest.fixture
def build_app():
    apps = []

    def build(url, **overrides):
        apps.append(create_app(base_config(url, **overrides)))
        return apps[-1]

    yield build
    for app in apps:
        get_engine(app).dispose()


def init_db(app):
    # The `flask` command pushes an app context for app commands; so does this.
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["init-db"])
    assert (result.exit_code, result.output) == (0, "Initialized the database (postgresql).\n")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_reference_rows_are_read_and_served_unchanged(fresh_database, build_app):
    url, engine = fresh_database
    with engine.begin() as connection:
        connection.execute(text(REFERENCE_SCHEMA + USER_TABLE + SESSION_TABLE.format(zone="with")))
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        connection.execute(text(INSERT_SESSION), {"token": LIVE_TOKEN, "expires_at": tomorrow})
        task_id = connection.execute(text(INSERT_REFERENCE_TASK)).scalar_one()
    app = build_app(url)
    init_db(app)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM task")).scalar_one() == 1
        indexes = set(connection.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'task'")).scalars())
        session_indexes = set(
            connection.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'session'")).scalars()
        )
    assert "ix_task_user_id_id" in indexes
    assert session_indexes == {"session_pkey", "session_token_key", "session_userId_idx", "ix_session_token_digest"}

    client, auth = app.test_client(), bearer(LIVE_TOKEN)
    expected = {
        "id": task_id,
        "user_id": "ref-user",
        "title": "From the reference",
        "description": "made by SQLModel",
        "completed": False,
        "priority": "high",
        "category": "work",
        "tags": ["x", "y"],
        "created_at": "2025-01-02T03:04:05.678901+00:00",
        "updated_at": "2025-01-02T03:04:05.678901+00:00",
        "due_date": None,
        "due_all_day": False,
        "recurrence_pattern": None,
        "is_recurring": False,
        "remind_at": None,
        "reminder_sent": False,
    }
    listed = client.get("/api/tasks", headers=auth)
    assert (listed.status_code, listed.get_json()) == (200, {"data": [expected]})
    fetched = client.get(f"/api/tasks/{task_id}", headers=auth)
    assert (fetched.status_code, fetched.get_json()) == (200, {"data": expected})

    created = client.post("/api/tasks", headers=auth, json={"title": "New", "priority": "low", "tags": ["z"]})
    assert created.status_code == 200
    new_id = created.get_json()["data"]["id"]
    assert new_id == task_id + 1
    updated = client.put(f"/api/tasks/{task_id}", headers=auth, json={"priority": "medium"})
    assert (updated.status_code, updated.get_json()["data"]["priority"]) == (200, "medium")
    toggled = client.patch(f"/api/tasks/{task_id}/complete", headers=auth)
    assert (toggled.status_code, toggled.get_json()["data"]["completed"]) == (200, True)
    deleted = client.delete(f"/api/tasks/{new_id}", headers=auth)
    assert (deleted.status_code, deleted.get_json()) == (200, {"data": {"ok": True}})


def test_sessions_of_better_auth_before_1_3_11_expire_on_time(fresh_database, build_app):
    """Before 1.3.11 Better Auth stored "expiresAt" as a naive timestamp holding UTC."""
    url, engine = fresh_database
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(text(USER_TABLE + SESSION_TABLE.format(zone="without")))
        connection.execute(text(INSERT_SESSION), {"token": LIVE_TOKEN, "expires_at": now + timedelta(hours=1)})
        connection.execute(text(INSERT_SESSION), {"token": "E" * 32, "expires_at": now - timedelta(hours=1)})
    app = build_app(url)
    init_db(app)
    client = app.test_client()
    assert client.get("/api/tasks", headers=bearer(LIVE_TOKEN)).status_code == 200
    assert client.get("/api/tasks", headers=bearer("E" * 32)).status_code == 401


def test_a_custom_session_table_and_columns_are_configurable(fresh_database, build_app):
    url, engine = fresh_database
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE auth_sessions (id text PRIMARY KEY, session_token text NOT NULL UNIQUE,"
                " user_id text NOT NULL, expires_at timestamp with time zone NOT NULL)"
            )
        )
        connection.execute(
            text("INSERT INTO auth_sessions VALUES ('s1', :token, 'custom-user', now() + interval '1 day')"),
            {"token": LIVE_TOKEN},
        )
    app = build_app(
        url,
        SESSION_TABLE="auth_sessions",
        SESSION_TOKEN_COLUMN="session_token",
        SESSION_USER_ID_COLUMN="user_id",
        SESSION_EXPIRES_AT_COLUMN="expires_at",
    )
    init_db(app)
    client = app.test_client()
    created = client.post("/api/tasks", headers=bearer(LIVE_TOKEN), json={"title": "mine"})
    assert (created.status_code, created.get_json()["data"]["user_id"]) == (200, "custom-user")
    listed = client.get("/api/tasks", headers=bearer(LIVE_TOKEN))
    assert (listed.status_code, listed.get_json()) == (200, {"data": [created.get_json()["data"]]})
    assert client.get("/api/tasks", headers=bearer("U" * 32)).status_code == 401


def test_a_reference_task_made_recurring_gets_one_next_occurrence(fresh_database, build_app):
    """The reference's rows are kept through the migrations, without a link; a task of theirs made recurring and
    toggled five times has exactly one next occurrence."""
    url, engine = fresh_database
    with engine.begin() as connection:
        connection.execute(text(REFERENCE_SCHEMA + USER_TABLE + SESSION_TABLE.format(zone="with")))
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        connection.execute(text(INSERT_SESSION), {"token": LIVE_TOKEN, "expires_at": tomorrow})
        task_ids = [connection.execute(text(INSERT_REFERENCE_TASK)).scalar_one() for _ in range(3)]
    app = build_app(url)
    init_db(app)
    with engine.connect() as connection:
        kept = connection.execute(text("SELECT id, title, recurs_from FROM task ORDER BY id")).all()
        unique = connection.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_task_recurs_from'"))
        index = unique.scalar_one()
    assert [tuple(row) for row in kept] == [(task_id, "From the reference", None) for task_id in task_ids]
    assert index == "CREATE UNIQUE INDEX uq_task_recurs_from ON public.task USING btree (recurs_from)"

    client, auth = app.test_client(), bearer(LIVE_TOKEN)
    schedule = {"recurrence_pattern": "monthly", "due_date": "2026-01-31T09:00:00Z"}
    made_recurring = client.put(f"/api/tasks/{task_ids[0]}", headers=auth, json=schedule)
    assert (made_recurring.status_code, made_recurring.get_json()["data"]["is_recurring"]) == (200, True)
    answers = [client.patch(f"/api/tasks/{task_ids[0]}/complete", headers=auth).get_json() for _ in range(5)]
    assert ["next_task" in answer for answer in answers] == [True, False, False, False, False]
    listed = client.get("/api/tasks", headers=auth).get_json()["data"]
    assert [(task["id"], task["due_date"], task["completed"]) for task in listed] == [
        (answers[0]["next_task"]["id"], "2026-02-28T09:00:00+00:00", False),
        (task_ids[2], None, False),
        (task_ids[1], None, False),
        (task_ids[0], "2026-01-31T09:00:00+00:00", True),
    ]
