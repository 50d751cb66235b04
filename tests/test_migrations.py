"""The schema is built by migrations only, and they go both ways without losing rows."""

import pytest
from sqlalchemy import inspect, text

from todo_api.database import current_revision, downgrade, get_engine, upgrade

HEAD = "0007"


def task_indexes(engine):
    """Index names, expression indexes included (SQLAlchemy's inspector skips those on SQLite)."""
    query = {
        "postgresql": "SELECT indexname FROM pg_indexes WHERE tablename = 'task'",
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'task'",
    }[engine.dialect.name]
    with engine.connect() as connection:
        return set(connection.execute(text(query)).scalars())


def test_the_schema_is_at_the_newest_revision(app):
    assert current_revision(get_engine(app)) == HEAD


def test_indexes_for_every_list_query_exist(app):
    assert {
        "ix_task_user_id_id",
        "ix_task_user_created",
        "ix_task_user_updated",
        "ix_task_user_title",
        "ix_task_user_priority",
        "ix_task_user_due_asc",
        "ix_task_user_due_desc",
        "ix_task_user_reminder_due",
    } <= task_indexes(get_engine(app))


def test_downgrade_to_the_reference_table_and_back_keeps_rows(app, client, auth, create_task, backend):
    engine = get_engine(app)
    task = create_task(title="survives", tags=["a"], due_date="2026-06-01T00:00:00Z")
    downgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    columns = {column["name"] for column in inspect(engine).get_columns("task")}
    assert columns == {
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
    with engine.connect() as connection:
        assert connection.execute(text("SELECT title FROM task")).scalars().all() == ["survives"]
    upgrade(engine)
    assert current_revision(engine) == HEAD
    fetched = client.get(f"/api/tasks/{task['id']}", headers=auth).get_json()["data"]
    assert (fetched["title"], fetched["tags"], fetched["due_date"]) == ("survives", ["a"], None)


def test_upgrade_is_idempotent(app):
    upgrade(get_engine(app))
    upgrade(get_engine(app))
    assert current_revision(get_engine(app)) == HEAD


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_keyword_search_is_trigram_indexed_on_postgres(app):
    assert {"ix_task_title_trgm", "ix_task_description_trgm"} <= task_indexes(get_engine(app))


def test_db_commands(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["db", "current"])
    assert (result.exit_code, result.output) == (0, f"{HEAD}\n")
    result = runner.invoke(args=["db", "downgrade", "0002"])
    assert (result.exit_code, result.output) == (0, "Database at revision 0002.\n")
    result = runner.invoke(args=["db", "upgrade"])
    assert (result.exit_code, result.output) == (0, f"Database at revision {HEAD}.\n")


def test_idempotency_keys_have_their_own_table_keyed_by_user_and_key(app):
    engine = get_engine(app)
    assert inspect(engine).get_pk_constraint("idempotency_key")["constrained_columns"] == ["user_id", "key"]
    assert {index["name"]: index["column_names"] for index in inspect(engine).get_indexes("idempotency_key")} == {
        "ix_idempotency_key_user_created": ["user_id", "created_at"],
    }
    downgrade(engine, "0003")
    assert "idempotency_key" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert "idempotency_key" in inspect(engine).get_table_names()
