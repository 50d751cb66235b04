"""The command-line tools: `init-db` and `create-session`."""

import re

import pytest
from conftest import base_config
from sqlalchemy import func, inspect, select

from todo_api import create_app
from todo_api.database import get_engine
from todo_api.models import user

DIALECTS = {"postgres": "postgresql", "sqlite": "sqlite"}


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


def test_init_db_without_auth_tables_creates_only_the_service_tables(fresh_sqlite_app):
    result = fresh_sqlite_app.test_cli_runner().invoke(args=["init-db", "--no-auth-tables"])
    assert (result.exit_code, result.output) == (0, "Initialized the database (sqlite).\n")
    assert set(inspect(get_engine(fresh_sqlite_app)).get_table_names()) == {
        "alembic_version",
        "task",
        "idempotency_key",
        "user_settings",
    }


def test_init_db_on_sqlite_creates_the_auth_tables_by_default(fresh_sqlite_app):
    result = fresh_sqlite_app.test_cli_runner().invoke(args=["init-db"])
    assert (result.exit_code, result.output) == (0, "Initialized the database (sqlite).\n")
    assert set(inspect(get_engine(fresh_sqlite_app)).get_table_names()) == {
        "alembic_version",
        "task",
        "idempotency_key",
        "user_settings",
        "user",
        "session",
    }


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
