"""The output serializer gives exactly what the marshmallow TaskSchema gives."""

from datetime import datetime

import pytest
from sqlalchemy import select

from support import FULL_TASK
from todo_api.db.connections import get_engine
from todo_api.db.tables import SHOWN_TASK_COLUMNS, task
from todo_api.tasks.schemas import TaskSchema, task_output

VARIETY = [
    {"title": "plain"},
    FULL_TASK,
    {"title": "recurring", "recurrence_pattern": "monthly", "due_date": "2026-01-31T00:00:00Z"},
    {"title": "Füße 🦶", "tags": ["ñ"], "priority": "low"},
    {"title": "all day", "due_date": "2026-01-30", "remind_at": "2026-01-29T18:00"},
    {"title": "wall clock", "due_date": "2026-01-30T10:00:05.123456", "remind_at": "2026-01-30T09:00:00Z"},
    {"title": "instant, wall-clock reminder", "due_date": "2026-01-30T10:00:00Z", "remind_at": "2026-01-30T09:00"},
    {"title": "recurring all day", "recurrence_pattern": "weekly", "due_date": "2026-03-26"},
]


def stored_row(app, task_id):
    with get_engine(app).connect() as connection:
        return connection.execute(select(*SHOWN_TASK_COLUMNS).where(task.c.id == task_id)).one()


@pytest.mark.parametrize("fields", VARIETY)
def test_task_output_matches_the_schema(app, client, auth, fields):
    assert client.put("/api/settings", headers=auth, json={"time_zone": "Europe/Berlin"}).status_code == 200
    created = client.post("/api/tasks", headers=auth, json=fields)
    assert created.status_code == 200
    row = stored_row(app, created.get_json()["data"]["id"])
    expected = TaskSchema().dump(row)
    assert app.json.loads(app.json.dumps(task_output(row))) == expected
    assert created.get_json()["data"] == expected


def test_every_kind_of_task_is_shown_alike_by_both(app, client, auth):
    """Created, listed and recurred: the wall-clock forms among them."""
    for fields in VARIETY:
        assert client.post("/api/tasks", headers=auth, json=fields).status_code == 200
    for shown in client.get("/api/tasks", headers=auth).get_json()["data"]:
        if shown["is_recurring"]:
            next_task = client.patch(f"/api/tasks/{shown['id']}/complete", headers=auth).get_json()["next_task"]
            assert next_task == TaskSchema().dump(stored_row(app, next_task["id"]))
    listed = client.get("/api/tasks", headers=auth).get_json()["data"]
    assert len(listed) == len(VARIETY) + 2
    assert listed == [TaskSchema().dump(stored_row(app, shown["id"])) for shown in listed]
    assert {shown["due_date"] for shown in listed} >= {"2026-01-30T00:00:00", "2026-04-02T00:00:00"}


def test_the_schema_shows_wall_clock_values_without_an_offset():
    row = {
        "due_date": datetime(2026, 1, 29, 23),
        "due_local": datetime(2026, 1, 30),
        "remind_at": datetime(2026, 1, 29, 17, 0, 0, 5),
        "remind_local": None,
    }
    shown = TaskSchema(only=("due_date", "remind_at")).dump(row)
    assert shown == {"due_date": "2026-01-30T00:00:00", "remind_at": "2026-01-29T17:00:00.000005+00:00"}
