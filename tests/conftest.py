"""Fixtures, and how each test picks its database; plain helpers are in support/ (`from support import ...`).

Tests that take `app`, `client`, `make_app` or `backend` run once per backend:
`postgres` (a throwaway database made for this run and dropped after it),
`sqlite` (a file per test), and, when pgbouncer is installed, `pgbouncer` (the
same Postgres database through a PgBouncer in transaction mode, as a deployment
on Neon's pooled URL runs). `@pytest.mark.backends("postgres", "pgbouncer")` on
a test, or as a module's `pytestmark`, runs it on those backends only.
Postgres is found through TEST_POSTGRES_URL, by default the local server's
`postgres` database, which is only used to create and drop the throwaway one;
the schema is always migrated on the direct URL.

What a test needs beyond Python is a marker, so that `make test-quick`
(`-m "not postgres and not redis and not node"`) runs the rest anywhere:
`postgres` is set here on the postgres and pgbouncer runs and on every test
that takes one of the Postgres fixtures below; a test that reaches Postgres
another way (a private cluster, ADMIN_URL) carries it by hand, as tests that
need Redis carry `redis` and those that run Node carry `node`.
"""

import contextlib
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.db.connections import get_engine
from todo_api.db.migrate import create_schema

# The shared helpers' asserts explain themselves on failure, as a test's do.
pytest.register_assert_rewrite("support", "drills.harness")

from support import ADMIN_URL, base_config, throwaway_database, truncate_postgres  # noqa: E402
from support.pgbouncer import Pooler  # noqa: E402
from support.pgbouncer import missing_requirement as pooler_missing  # noqa: E402
from support.push_service import MisbehavingService  # noqa: E402

POOLER_MISSING = pooler_missing()
BACKENDS = ["postgres", "sqlite"] if POOLER_MISSING else ["postgres", "sqlite", "pgbouncer"]
POSTGRES_BACKENDS = [backend for backend in BACKENDS if backend != "sqlite"]
KNOWN_BACKENDS = ["postgres", "sqlite", "pgbouncer"]
# A test that takes one of these needs the Postgres server: it is marked `postgres`.
POSTGRES_FIXTURES = {"postgres_url", "empty_postgres_url", "pooled_url", "pooler"}


def pytest_report_header():
    if POOLER_MISSING:
        return f"database tests: postgres, sqlite (not through pgbouncer: {POOLER_MISSING})"
    return "database tests: postgres, sqlite, and postgres through pgbouncer (transaction mode)"


def parametrized_names(mark):
    names = mark.args[0] if mark.args else mark.kwargs["argnames"]
    return [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)


def backend_param(name):
    if name == "pgbouncer" and POOLER_MISSING:
        return pytest.param(name, marks=[pytest.mark.postgres, pytest.mark.skip(reason=POOLER_MISSING)])
    return pytest.param(name, marks=[pytest.mark.postgres] if name != "sqlite" else [])


def pytest_generate_tests(metafunc):
    """Parametrize `backend`: every backend available, or those the test's `backends` marker names."""
    if "backend" not in metafunc.fixturenames:
        return
    test = metafunc.definition
    if any("backend" in parametrized_names(mark) for mark in test.iter_markers("parametrize")):
        pytest.fail(f"{test.nodeid}: pick backends with @pytest.mark.backends(...), not parametrize", pytrace=False)
    marker = test.get_closest_marker("backends")
    if marker is None:
        names = BACKENDS
    else:
        unknown = [name for name in marker.args if name not in KNOWN_BACKENDS]
        if unknown or not marker.args:
            named = ", ".join(map(repr, marker.args))
            pytest.fail(f"{test.nodeid}: backends({named}) must name some of {KNOWN_BACKENDS}", pytrace=False)
        names = [name for name in KNOWN_BACKENDS if name in marker.args]
    metafunc.parametrize("backend", [backend_param(name) for name in names], indirect=True)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway Postgres database with the schema, for the whole run."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_database(ADMIN_URL, "todo_api_test"))
        except Exception as error:  # noqa: BLE001
            pytest.exit(f"Postgres is needed for the test suite and is not reachable at {ADMIN_URL}: {error}", 2)
        app = create_app(base_config(url))
        create_schema(get_engine(app), app.config, with_auth_tables=True)
        get_engine(app).dispose()
        yield url


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
    with throwaway_database(ADMIN_URL, "todo_api_empty") as url:
        yield url


@pytest.fixture
def backend(request):
    """The backend of this run of the test (see pytest_generate_tests)."""
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


@pytest.fixture
def misbehaving():
    """Push services that misbehave on loopback (support/push_service.py): `misbehaving(behaviour, interval)` starts
    one; all are stopped after the test."""
    services = []

    def start(behaviour, interval=5.0):
        services.append(MisbehavingService(behaviour, interval))
        return services[-1]

    yield start
    for service in services:
        service.stop()
