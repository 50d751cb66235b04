"""The output serializer gives exactly what the marshmallow TaskSchema gives."""

import pytest
from sqlalchemy import select

from todo_api.database import get_engine
from todo_api.models import task
from todo_api.schemas import TaskSchema, task_output

VARIETY = [
    {"title": "plain"},
    {
        "title": "full",
        "description": "d",
        "priority": "high",
        "category": "c",
        "tags": ["a", "b"],
        "due_date": "2026-02-28T23:59:59.999999+05:00",
        "remind_at": "2026-02-28T12:00:00Z",
    },
    {"title": "recurring", "recurrence_pattern": "monthly", "due_date": "2026-01-31T00:00:00Z"},
    {"title": "Füße 🦶", "tags": ["ñ"], "priority": "low"},
]


@pytest.mark.parametrize("fields", VARIETY)
def test_task_output_matches_the_schema(app, client, auth, fields):
    created = client.post("/api/tasks", headers=auth, json=fields)
    assert created.status_code == 200
    with get_engine(app).connect() as connection:
        row = connection.execute(select(task).where(task.c.id == created.get_json()["data"]["id"])).one()
    expected = TaskSchema().dump(row)
    assert app.json.loads(app.json.dumps(task_output(row))) == expected
    assert created.get_json()["data"] == expected
