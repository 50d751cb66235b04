"""The command-line tools: `init-db`, `db ...` and `create-session`."""

import http.client
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import delete, func, inspect, select

from support import base_config, free_port, sessions_of
from todo_api import MISSING_DATABASE_URL, create_app
from todo_api.db.connections import get_engine
from todo_api.db.tables import idempotency_key, task, user, user_settings

UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:9/nowhere"  # the discard port: nothing listens
DIALECTS = {"postgres": "postgresql", "pgbouncer": "postgresql", "sqlite": "sqlite"}


@pytest.fixture
def fresh_sqlite_app(tmp_path):
    app = create_app(base_config(f"sqlite:///{tmp_path / 'fresh.sqlite'}"))
    yield app
    get_engine(app).dispose()


def create_session(app, email):
    result = app.test_cli_runner().invoke(args=["create-session", email])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"[A-Za-z0-9]{32}\n", result.output), result.output
    return result.output.strip()


def test_init_db_is_idempotent_and_keeps_rows(app, client, auth, create_task, backend):
    runner = app.test_cli_runner()
    expected = (0, f"Initialized the database ({DIALECTS[backend]}).\n")
    result = runner.invoke(args=["init-db"])
    assert (result.exit_code, result.output) == expected
    task = create_task(title="survives init-db")
    result = runner.invoke(args=["init-db"])
    assert (result.exit_code, result.output) == expected
    assert client.get("/api/tasks", headers=auth).get_json() == {"data": [task]}


SERVICE_TABLES = {"alembic_version", "task", "idempotency_key", "user_settings", "push_subscription", "push_delivery"}
# The change log, and on SQLite the counter its trigger numbers it with (migration 0010).
SERVICE_TABLES |= {"task_change", "task_change_counter"}


@pytest.mark.parametrize(
    ("options", "tables"),
    [([], SERVICE_TABLES | {"user", "session"}), (["--no-auth-tables"], SERVICE_TABLES)],
    ids=["auth tables by default", "--no-auth-tables"],
)
def test_init_db_on_sqlite_creates_the_auth_tables_unless_told_not_to(fresh_sqlite_app, options, tables):
    result = fresh_sqlite_app.test_cli_runner().invoke(args=["init-db", *options])
    assert (result.exit_code, result.output) == (0, "Initialized the database (sqlite).\n")
    assert set(inspect(get_engine(fresh_sqlite_app)).get_table_names()) == tables


def test_create_session_prints_a_token_that_authenticates(app, client):
    token = create_session(app, "cli@example.com")
    response = client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.get_json()) == (200, {"data": []})


def test_create_session_twice_gives_two_sessions_of_one_user(app, client):
    tokens = [create_session(app, "cli@example.com") for _ in range(2)]
    assert tokens[0] != tokens[1]
    user_ids = []
    for token in tokens:
        response = client.post("/api/tasks", headers={"Authorization": f"Bearer {token}"}, json={"title": "mine"})
        assert response.status_code == 200
        user_ids.append(response.get_json()["data"]["user_id"])
    assert user_ids[0] == user_ids[1]
    with get_engine(app).connect() as connection:
        assert connection.execute(select(func.count()).select_from(user)).scalar() == 1


def test_create_session_refuses_a_lifetime_under_one_day(app):
    result = app.test_cli_runner().invoke(args=["create-session", "cli@example.com", "--days", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--days'" in result.output
    with get_engine(app).connect() as connection:
        assert connection.execute(select(func.count()).select_from(user)).scalar() == 0


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVELOPMENT_WARNING = (
    "WARNING todo_api: SECRET_KEY and BETTER_AUTH_SECRET are unset: page cursors are signed with a public "
    "development secret"
)


def flask_command(tmp_path, *args, **environment):
    """`flask --app todo_api ...` as on a fresh clone: no secret, no FLASK_DEBUG, no .env; `environment` over that."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"SECRET_KEY", "BETTER_AUTH_SECRET", "FLASK_DEBUG", "DATABASE_URL"}
    }
    env.update(PYTHONPATH=REPO, FLASK_SKIP_DOTENV="1", DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    env.update(environment)
    command = [sys.executable, "-m", "flask", "--app", "todo_api", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_commands_work_without_a_secret_and_warn_on_stderr(tmp_path):
    done = flask_command(tmp_path, "init-db")
    assert (done.returncode, done.stdout) == (0, "Initialized the database (sqlite).\n")
    assert DEVELOPMENT_WARNING in done.stderr
    done = flask_command(tmp_path, "create-session", "me@example.com")
    assert done.returncode == 0
    assert re.fullmatch(r"[A-Za-z0-9]{32}\n", done.stdout), done.stdout  # the token alone: TOKEN=$(...) works
    assert DEVELOPMENT_WARNING in done.stderr


def test_flask_run_without_a_secret_or_debug_refuses_to_start(tmp_path):
    done = flask_command(tmp_path, "run", "--port", "0")
    assert done.returncode == 1
    assert (
        done.stderr.rstrip()
        .splitlines()[-1]
        .startswith("RuntimeError: SECRET_KEY or BETTER_AUTH_SECRET must be set: page cursors are signed with it")
    )


def test_flask_run_without_a_database_url_or_debug_refuses_to_start(tmp_path):
    done = flask_command(tmp_path, "run", "--port", "0", DATABASE_URL="", SECRET_KEY="k" * 32)
    assert done.returncode == 1
    assert done.stderr.rstrip().splitlines()[-1] == f"RuntimeError: {MISSING_DATABASE_URL}"


def test_make_run_serves_on_sqlite_without_a_database_url_or_a_secret(tmp_path):
    """`make run`'s development server (with its reloader): SQLite in `instance/`, the development secret, and the
    frontend's development server let in by default."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in {"SECRET_KEY", "BETTER_AUTH_SECRET"}}
    env.update(PYTHONPATH=REPO, FLASK_SKIP_DOTENV="1", DATABASE_URL="", CORS_ORIGINS="", FLASK_DEBUG="1")
    command = [sys.executable, "-m", "flask", "--app", "todo_api", "run", "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        response = first_answer(server, port, "/health", {"Origin": "http://localhost:3000"})
        assert (response.status, response.getheader("Access-Control-Allow-Origin")) == (200, "http://localhost:3000")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    assert DEVELOPMENT_WARNING in server.stderr.read().decode()


def first_answer(server, port, path, headers, timeout=30):
    """The first answer of a server that is starting on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            return response
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    raise AssertionError(f"no answer on port {port} within {timeout} s")


# -- Erasing the rows of deleted users ----------------------------------------


@pytest.fixture
def two_users(app, client, new_session):
    """Alice and Bob, each with two tasks, one of them created with an Idempotency-Key; returns their user ids."""
    ids = {}
    for email in ["alice@example.com", "bob@example.com"]:
        headers = {"Authorization": f"Bearer {new_session(email)}"}
        for title, key in [("with a key", "key-1"), ("without", None)]:
            response = client.post(
                "/api/tasks", json={"title": title}, headers={**headers, **({"Idempotency-Key": key} if key else {})}
            )
            assert response.status_code == 200
        ids[email.split("@")[0]] = response.get_json()["data"]["user_id"]
        assert client.put("/api/settings", json={"time_zone": "Europe/Berlin"}, headers=headers).status_code == 200
    return ids


# What erasing one user of `two_users` touches, and nothing.
ALL_ROWS = "task 2, idempotency_key 1, user_settings 1, push_subscription 0"
KEY_ROWS = "task 0, idempotency_key 1, user_settings 1, push_subscription 0"
NO_ROWS = "task 0, idempotency_key 0, user_settings 0, push_subscription 0"


def rows_of(app, user_id):
    with get_engine(app).connect() as connection:
        return tuple(
            connection.execute(select(func.count()).select_from(table).where(table.c.user_id == user_id)).scalar()
            for table in (task, idempotency_key, user_settings)
        )


def delete_user(app, user_id):
    """What Better Auth does when a user deletes their account (their sessions go with them)."""
    sessions = sessions_of(app)
    with get_engine(app).begin() as connection:
        connection.execute(delete(sessions).where(sessions.c.userId == user_id))
        connection.execute(delete(user).where(user.c.id == user_id))


def run(app, *args):
    result = app.test_cli_runner().invoke(args=list(args))
    return result.exit_code, result.output


def test_erase_orphans_erases_the_rows_of_users_deleted_from_better_auth(app, two_users):
    delete_user(app, two_users["alice"])
    assert run(app, "erase-orphans", "--dry-run") == (
        0,
        f"Users missing from Better Auth's user table: 1. Would erase: {ALL_ROWS}.\n",
    )
    assert (rows_of(app, two_users["alice"]), rows_of(app, two_users["bob"])) == ((2, 1, 1), (2, 1, 1))
    assert run(app, "erase-orphans") == (
        0,
        f"Users missing from Better Auth's user table: 1. Erased: {ALL_ROWS}.\n",
    )
    assert (rows_of(app, two_users["alice"]), rows_of(app, two_users["bob"])) == ((0, 0, 0), (2, 1, 1))
    assert run(app, "erase-orphans") == (
        0,
        f"Users missing from Better Auth's user table: 0. Erased: {NO_ROWS}.\n",
    )


def test_erase_orphans_counts_a_user_with_only_an_idempotency_key(app, two_users):
    """A deleted task keeps its key for 24 hours: the key alone still belongs to the user."""
    with get_engine(app).begin() as connection:
        connection.execute(delete(task).where(task.c.user_id == two_users["alice"]))
    delete_user(app, two_users["alice"])
    assert run(app, "erase-orphans") == (
        0,
        f"Users missing from Better Auth's user table: 1. Erased: {KEY_ROWS}.\n",
    )
    assert (rows_of(app, two_users["alice"]), rows_of(app, two_users["bob"])) == ((0, 0, 0), (2, 1, 1))


def test_erase_orphans_refuses_when_the_user_table_is_empty(app, two_users):
    """Pointed at a database whose users live elsewhere, it would otherwise erase everyone's tasks."""
    for user_id in two_users.values():
        delete_user(app, user_id)
    for args in [("erase-orphans",), ("erase-orphans", "--dry-run")]:
        assert run(app, *args) == (
            1,
            "Error: Better Auth's user table is empty: erasing would delete every user's rows, so nothing was "
            "erased.\n",
        )
    assert [rows_of(app, user_id) for user_id in two_users.values()] == [(2, 1, 1), (2, 1, 1)]


def test_erase_user_erases_one_users_rows(app, two_users):
    bob = two_users["bob"]
    assert run(app, "erase-user", bob, "--dry-run") == (
        0,
        f"User {bob}. Would erase: {ALL_ROWS}.\n",
    )
    assert rows_of(app, bob) == (2, 1, 1)
    assert run(app, "erase-user", bob) == (
        0,
        f"User {bob}. Erased: {ALL_ROWS}.\n",
    )
    assert (rows_of(app, two_users["alice"]), rows_of(app, bob)) == ((2, 1, 1), (0, 0, 0))
    assert run(app, "erase-user", "no-such-user") == (
        0,
        f"User no-such-user. Erased: {NO_ROWS}.\n",
    )


def test_erase_orphans_refuses_without_a_user_table(fresh_sqlite_app):
    assert run(fresh_sqlite_app, "init-db", "--no-auth-tables") == (0, "Initialized the database (sqlite).\n")
    assert run(fresh_sqlite_app, "erase-orphans") == (
        1,
        "Error: Better Auth's user table is not in this database: nothing was erased.\n",
    )


def test_schema_commands_run_on_the_migration_url(empty_postgres_url):
    """Migrations go to DATABASE_MIGRATION_URL (Neon's direct URL); DATABASE_URL (the pooled one) is not touched."""
    app = create_app(base_config(UNREACHABLE_URL, DATABASE_MIGRATION_URL=empty_postgres_url))
    runner = app.test_cli_runner()
    try:
        with app.app_context():
            for args, output in [
                (["db", "current"], "none\n"),
                (["init-db", "--auth-tables"], "Initialized the database (postgresql).\n"),
                (["db", "downgrade", "0004"], "Database at revision 0004.\n"),
                (["db", "upgrade"], "Database at revision 0010.\n"),
                (["db", "current"], "0010\n"),
            ]:
                result = runner.invoke(args=args)
                assert (args, result.exit_code, result.output) == (args, 0, output)
    finally:
        get_engine(app).dispose()
    served = create_app(base_config(empty_postgres_url))
    try:
        token = create_session(served, "migrated@example.com")
        response = served.test_client().get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
        assert (response.status_code, response.get_json()) == (200, {"data": []})
    finally:
        get_engine(served).dispose()


def test_schema_commands_fail_when_the_migration_url_does_not_answer(empty_postgres_url):
    app = create_app(base_config(empty_postgres_url, DATABASE_MIGRATION_URL=UNREACHABLE_URL))
    try:
        with app.app_context():
            for args in (["db", "current"], ["db", "upgrade"], ["init-db"]):
                result = app.test_cli_runner().invoke(args=args)
                assert (args, result.exit_code, type(result.exception).__name__) == (args, 1, "OperationalError")
        assert inspect(get_engine(app)).get_table_names() == []
    finally:
        get_engine(app).dispose()


# -- create-session where Better Auth's tables are missing ------------------------------------


NO_AUTH_TABLES = (
    "Error: Better Auth's tables are not in this database (it lacks table user, table session): run Better Auth's "
    "migrations (`npx @better-auth/cli migrate`), or for development `flask --app todo_api init-db --auth-tables`.\n"
)


@pytest.fixture
def without_auth_tables(backend, request, tmp_path):
    """The URL of a new database of this backend, migrated without Better Auth's tables (through PgBouncer: the
    pooled URL; the migrations ran on the direct one)."""
    if backend == "sqlite":
        url = direct_url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    else:
        direct_url = request.getfixturevalue("empty_postgres_url")
        url = request.getfixturevalue("pooler").url(direct_url) if backend == "pgbouncer" else direct_url
    migrating = create_app(base_config(direct_url))
    try:
        assert run(migrating, "init-db", "--no-auth-tables")[0] == 0
    finally:
        get_engine(migrating).dispose()
    return url


def test_create_session_without_better_auths_tables_says_what_to_run(without_auth_tables):
    app = create_app(base_config(without_auth_tables))
    try:
        assert run(app, "create-session", "me@example.com") == (1, NO_AUTH_TABLES)
        assert "user" not in inspect(get_engine(app)).get_table_names()
    finally:
        get_engine(app).dispose()


@pytest.mark.backends("postgres")
def test_the_create_session_command_says_it_in_one_line_without_a_traceback(without_auth_tables, tmp_path):
    """As an operator runs it, on a Postgres where Better Auth's migrations have not run."""
    done = flask_command(
        tmp_path, "create-session", "me@example.com", DATABASE_URL=without_auth_tables, SECRET_KEY="k" * 32
    )
    assert (done.returncode, done.stdout, done.stderr) == (1, "", NO_AUTH_TABLES)
