"""Fixtures: a fresh app per test on a real database, real users and sessions.

Tests that take `app` or `client` run on Postgres (a throwaway database made
for this run and dropped after it), on SQLite (a file per test), and, when
pgbouncer is installed, on the same Postgres database through a PgBouncer in
transaction mode (`pgbouncer`), as a deployment on Neon's pooled URL runs.
Postgres is found through TEST_POSTGRES_URL, by default the local server's
`postgres` database, which is only used to create and drop the throwaway one;
the schema is always migrated on the direct URL.
"""

import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from pgbouncer import Pooler
from pgbouncer import missing_requirement as pooler_missing
from sqlalchemy import create_engine, delete, select, text, update
from sqlalchemy.engine import make_url

from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.database import get_engine, normalize_url
from todo_api.migrate import create_schema
from todo_api.tables import auth_tables

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-of-reasonable-length-0123456789"
POOLER_MISSING = pooler_missing()
BACKENDS = ["postgres", "sqlite"] if POOLER_MISSING else ["postgres", "sqlite", "pgbouncer"]
POSTGRES_BACKENDS = [backend for backend in BACKENDS if backend != "sqlite"]


def pytest_report_header():
    if POOLER_MISSING:
        return f"database tests: postgres, sqlite (not through pgbouncer: {POOLER_MISSING})"
    return "database tests: postgres, sqlite, and postgres through pgbouncer (transaction mode)"


def base_config(database_url, **overrides):
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        # Migrations run on DATABASE_URL unless a test says otherwise: a developer's own setting is never used.
        "DATABASE_MIGRATION_URL": None,
        "BETTER_AUTH_SECRET": None,
        "CORS_ORIGINS": ["http://localhost:3000"],
        # Rate limits stay on at their defaults, counted in memory: a developer's REDIS_URL is never used.
        "REDIS_URL": None,
        # Except the bound on one user's requests in progress, which is per worker process: tests that send many
        # requests of one user at once from threads stand for many workers. It has tests of its own.
        "RATELIMIT_CONCURRENT_PER_USER": 0,
        **overrides,
    }


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway Postgres database with the schema, for the whole run."""
    admin = create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"todo_api_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001
        pytest.exit(f"Postgres is needed for the test suite and is not reachable at {ADMIN_URL}: {error}", 2)
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    app = create_app(base_config(url))
    create_schema(get_engine(app), app.config, with_auth_tables=True)
    get_engine(app).dispose()
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pooler():
    """PgBouncer in transaction mode in front of the test server, for the whole run."""
    if POOLER_MISSING:
        pytest.skip(POOLER_MISSING)
    pooler = Pooler(ADMIN_URL).start()
    yield pooler
    pooler.stop()


@pytest.fixture(scope="session")
def pooled_url(postgres_url, pooler):
    """The throwaway database of `postgres_url`, through PgBouncer."""
    return pooler.url(postgres_url)


@pytest.fixture
def empty_postgres_url(postgres_url):
    """A new, empty Postgres database of this test's own, dropped afterwards (postgres_url proves the server is up)."""
    admin = create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"todo_api_empty_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


TRUNCATED = ("task", "idempotency_key", "user_settings", "push_subscription", "push_delivery", '"session"', '"user"')


def truncate_postgres(engine):
    with engine.connect() as connection, connection.execution_options(statement_timeout_ms=0).begin():
        connection.execute(text(f"TRUNCATE {', '.join(TRUNCATED)} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A migrated SQLite file that each SQLite test starts from a copy of."""
    path = tmp_path_factory.mktemp("template") / "todo.sqlite"
    app = create_app(base_config(f"sqlite:///{path}"))
    create_schema(get_engine(app), app.config, with_auth_tables=True)
    get_engine(app).dispose()
    return path


@pytest.fixture
def database_url(backend, request, tmp_path):
    if backend == "postgres":
        return request.getfixturevalue("postgres_url")
    if backend == "pgbouncer":
        return request.getfixturevalue("pooled_url")
    path = tmp_path / "todo.sqlite"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def make_app(database_url, backend, request):
    """Build apps on this test's database; every one is torn down after the test.

    Through PgBouncer the app is configured as on Neon: DATABASE_URL is the
    pooled URL and DATABASE_MIGRATION_URL the direct one.
    """
    apps = []
    deployment = {"DATABASE_MIGRATION_URL": request.getfixturevalue("postgres_url")} if backend == "pgbouncer" else {}

    def build(**overrides):
        app = create_app(base_config(database_url, **{**deployment, **overrides}))
        apps.append(app)
        return app

    yield build
    if apps and backend in POSTGRES_BACKENDS:
        truncate_postgres(get_engine(apps[0]))
    for app in apps:
        get_engine(app).dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def new_session(app):
    """Create a real user (by email) and session; return the session token."""

    def create(email="alice@example.com", lifetime=timedelta(days=7)):
        with get_engine(app).begin() as connection:
            return create_user_session(connection, app.config, email, lifetime)

    return create


@pytest.fixture
def token(new_session):
    return new_session("alice@example.com")


@pytest.fixture
def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def other_auth(new_session):
    return {"Authorization": f"Bearer {new_session('mallory@example.com')}"}


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


@pytest.fixture
def create_task(client, auth):
    def create(headers=None, **fields):
        body = {"title": "A task", **fields}
        response = client.post("/api/tasks", json=body, headers=headers or auth)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["data"]

    return create


@pytest.fixture
def concurrently(app):
    """`concurrently(request, threads)`: run `request(client)` from that many threads at once, each with its own
    test client, released together by a barrier; returns the responses."""

    def run_all(request, threads):
        barrier = threading.Barrier(threads, timeout=30)

        def run(_):
            client = app.test_client()
            barrier.wait()
            return request(client)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(run, range(threads)))

    return run_all
