"""The schema is built by migrations only, and they go both ways without losing rows."""

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from support import REFERENCE_TASK_COLUMNS, user_id_of
from todo_api.db.connections import get_engine
from todo_api.db.migrate import current_revision, downgrade, upgrade

HEAD = "0010"


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
    assert columns == REFERENCE_TASK_COLUMNS
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


@pytest.mark.backends("postgres")
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


def test_settings_and_push_tables_come_and_go_with_their_revision(app, client, auth, create_task):
    engine = get_engine(app)
    assert {"user_settings", "push_subscription", "push_delivery"} <= set(inspect(engine).get_table_names())
    assert inspect(engine).get_pk_constraint("user_settings")["constrained_columns"] == ["user_id"]
    assert {"ix_task_reminder_at", "ix_task_reminder_due_date"} <= task_indexes(engine)
    create_task(title="survives")
    client.put("/api/settings", headers=auth, json={"time_zone": "Europe/Berlin"})
    downgrade(engine, "0004")
    assert current_revision(engine) == "0004"
    tables = set(inspect(engine).get_table_names())
    assert not {"user_settings", "push_subscription", "push_delivery"} & tables
    assert not {"ix_task_reminder_at", "ix_task_reminder_due_date"} & task_indexes(engine)
    upgrade(engine)
    assert current_revision(engine) == HEAD
    assert [task["title"] for task in client.get("/api/tasks", headers=auth).get_json()["data"]] == ["survives"]
    assert client.get("/api/settings", headers=auth).get_json() == {"data": {"time_zone": "UTC"}}


def test_wall_clock_columns_keep_every_existing_row(app, client, auth, token, create_task):
    """Rows from before 0007 were given with an offset: they stay instants, shown as before."""
    engine = get_engine(app)
    kept = create_task(title="kept", due_date="2026-06-01T09:00:00+02:00", remind_at="2026-06-01T06:00:00Z")
    downgrade(engine, "0006")
    columns = {column["name"] for column in inspect(engine).get_columns("task")}
    assert not columns & {"due_all_day", "due_local", "remind_local"}
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO task (user_id, title, completed, priority, tags, created_at, updated_at, due_date,"
                " recurrence_pattern, remind_at, reminder_sent) VALUES (:user_id, 'old', false, 'high', '[]',"
                " '2026-01-01 10:00:00', '2026-01-01 10:00:00', '2026-01-31 09:00:00', 'monthly', NULL, false)"
            ),
            {"user_id": user_id_of(app, token)},
        )
    upgrade(engine)
    assert client.get(f"/api/tasks/{kept['id']}", headers=auth).get_json() == {"data": kept}
    old = client.get("/api/tasks?q=old", headers=auth).get_json()["data"][0]
    assert (old["due_date"], old["due_all_day"], old["remind_at"], old["is_recurring"]) == (
        "2026-01-31T09:00:00+00:00",
        False,
        None,
        True,
    )
    following = client.patch(f"/api/tasks/{old['id']}/complete", headers=auth).get_json()["next_task"]
    assert (following["due_date"], following["due_all_day"]) == ("2026-02-28T09:00:00+00:00", False)


def test_a_wall_clock_date_downgraded_keeps_its_instant(app, client, auth, create_task):
    engine = get_engine(app)
    assert client.put("/api/settings", headers=auth, json={"time_zone": "Europe/Berlin"}).status_code == 200
    all_day = create_task(due_date="2026-01-30")
    downgrade(engine, "0006")
    upgrade(engine)
    shown = client.get(f"/api/tasks/{all_day['id']}", headers=auth).get_json()["data"]
    assert (shown["due_date"], shown["due_all_day"]) == ("2026-01-29T23:00:00+00:00", False)


def test_user_settings_have_their_own_table_keyed_by_user(app, client, auth):
    engine = get_engine(app)
    assert inspect(engine).get_pk_constraint("user_settings")["constrained_columns"] == ["user_id"]
    columns = {column["name"]: column["nullable"] for column in inspect(engine).get_columns("user_settings")}
    assert columns == {"user_id": False, "time_zone": False, "updated_at": False}
    downgrade(engine, "0004")
    assert "user_settings" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert client.get("/api/settings", headers=auth).get_json() == {"data": {"time_zone": "UTC"}}


@pytest.mark.backends("postgres")
def test_the_time_zone_functions_come_and_go_with_0007(app):
    engine = get_engine(app)

    def functions():
        with engine.connect() as connection:
            query = "SELECT proname FROM pg_proc WHERE proname IN ('todo_day_start', 'todo_local_to_utc') ORDER BY 1"
            return connection.execute(text(query)).scalars().all()

    assert functions() == ["todo_day_start", "todo_local_to_utc"]
    downgrade(engine, "0006")
    assert functions() == []
    upgrade(engine)
    assert functions() == ["todo_day_start", "todo_local_to_utc"]


def test_the_database_refuses_a_second_next_occurrence_of_an_occurrence(app, client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    following = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()["next_task"]
    engine = get_engine(app)
    with engine.connect() as connection:
        copy = text(
            "INSERT INTO task (user_id, title, completed, priority, tags, created_at, updated_at, due_date,"
            " recurrence_pattern, reminder_sent, due_all_day, recurs_from)"
            " SELECT user_id, title, false, priority, tags, created_at, updated_at, due_date, recurrence_pattern,"
            " false, false, recurs_from FROM task WHERE id = :id"
        )
        with pytest.raises(IntegrityError):
            connection.execute(copy, {"id": following["id"]})
        connection.rollback()
        links = connection.execute(text("SELECT id, recurs_from FROM task ORDER BY id")).all()
    assert [tuple(link) for link in links] == [(task["id"], None), (following["id"], task["id"])]
    assert "uq_task_recurs_from" in task_indexes(engine)


def test_next_occurrence_links_come_and_go_with_0009_and_every_row_stays(app, client, auth, token, create_task):
    """A next occurrence made before 0009 has no link: completing its occurrence again makes one more, once."""
    engine = get_engine(app)
    linked = create_task(title="linked", recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    client.patch(f"/api/tasks/{linked['id']}/complete", headers=auth)
    downgrade(engine, "0008")
    assert current_revision(engine) == "0008"
    assert "recurs_from" not in {column["name"] for column in inspect(engine).get_columns("task")}
    assert "uq_task_recurs_from" not in task_indexes(engine)
    with engine.begin() as connection:  # an occurrence completed, and its next occurrence, as 0008 made them
        for title, completed, due in (("old", True, "2026-05-01 08:00:00"), ("old", False, "2026-05-02 08:00:00")):
            connection.execute(
                text(
                    "INSERT INTO task (user_id, title, completed, priority, tags, created_at, updated_at, due_date,"
                    " recurrence_pattern, reminder_sent, due_all_day) VALUES (:user_id, :title, :completed,"
                    " 'medium', '[]', '2026-04-01 10:00:00', '2026-04-01 10:00:00', :due, 'daily', false, false)"
                ),
                {"user_id": user_id_of(app, token), "title": title, "completed": completed, "due": due},
            )
    upgrade(engine)
    assert current_revision(engine) == HEAD
    assert "uq_task_recurs_from" in task_indexes(engine)
    with engine.connect() as connection:
        links = connection.execute(text("SELECT title, recurs_from FROM task ORDER BY id")).all()
    assert [tuple(link) for link in links] == [("linked", None)] * 2 + [("old", None)] * 2
    old = [task for task in client.get("/api/tasks?q=old", headers=auth).get_json()["data"] if task["completed"]]
    assert [task["due_date"] for task in old] == ["2026-05-01T08:00:00+00:00"]
    answers = [client.patch(f"/api/tasks/{old[0]['id']}/complete", headers=auth).get_json() for _ in range(6)]
    assert ["next_task" in answer for answer in answers] == [False, True, False, False, False, False]
    listed = client.get("/api/tasks?q=old", headers=auth).get_json()["data"]
    assert [(task["due_date"], task["completed"]) for task in listed] == [
        ("2026-05-02T08:00:00+00:00", False),
        ("2026-05-02T08:00:00+00:00", False),
        ("2026-05-01T08:00:00+00:00", True),
    ]
