"""Dates at the ends of the calendar: refused with a 422 or handled, never a 500."""

from datetime import datetime

import pytest
from sqlalchemy import update

from todo_api.db.connections import get_engine
from todo_api.db.tables import task


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("due_date", "9998-12-31T23:00:00-05:00"),  # already 9999 in UTC
        ("remind_at", "9998-12-31T23:00:00-05:00"),
        ("due_date", "1900-01-01T00:00:00+14:00"),  # still 1899 in UTC
        ("due_date", "9999-12-31T23:59:59-23:59"),  # no UTC form at all
    ],
)
def test_dates_whose_utc_form_leaves_the_range_are_422(client, auth, field, value):
    response = client.post("/api/tasks", headers=auth, json={"title": "x", field: value})
    assert response.status_code == 422
    assert response.get_json()["errors"] == {field: ["Must be between the years 1900 and 9998 (in UTC)."]}
    assert client.get("/api/tasks", headers=auth).get_json() == {"data": []}


@pytest.mark.parametrize("query", ["due_after=9998-12-31T23:00:00-05:00", "due_before=1900-01-01T00:00:00%2B14:00"])
def test_list_filters_leaving_the_range_are_422(client, auth, query):
    response = client.get(f"/api/tasks?{query}", headers=auth)
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == [query.split("=")[0]]


def test_dates_at_the_edges_of_the_range_are_kept(create_task):
    task = create_task(due_date="9998-12-31T23:59:59Z", remind_at="1900-01-01T00:00:00Z")
    assert (task["due_date"], task["remind_at"]) == ("9998-12-31T23:59:59+00:00", "1900-01-01T00:00:00+00:00")


def test_a_series_recurs_into_the_last_year(client, auth, create_task):
    first = create_task(due_date="9998-12-31T12:00:00Z", remind_at="9998-12-31T11:00:00Z", recurrence_pattern="yearly")
    response = client.patch(f"/api/tasks/{first['id']}/complete", headers=auth)
    assert response.status_code == 200
    assert (response.get_json()["next_task"]["due_date"], response.get_json()["next_task"]["remind_at"]) == (
        "9999-12-31T12:00:00+00:00",
        "9999-12-31T11:00:00+00:00",
    )


@pytest.mark.parametrize("how", ["toggle", "set", "put"])
def test_a_series_ends_at_the_end_of_the_calendar(client, auth, create_task, how):
    """An occurrence in the year 9999 has no next one; completing it still works."""
    first = create_task(due_date="9998-12-15T12:00:00Z", recurrence_pattern="yearly")
    last = client.patch(f"/api/tasks/{first['id']}/complete", headers=auth).get_json()["next_task"]
    assert last["due_date"] == "9999-12-15T12:00:00+00:00"
    path = f"/api/tasks/{last['id']}"
    if how == "toggle":
        response = client.patch(path + "/complete", headers=auth)
    elif how == "set":
        response = client.patch(path + "/complete", headers=auth, json={"completed": True})
    else:
        response = client.put(path, headers=auth, json={"completed": True})
    assert response.status_code == 200
    body = response.get_json()
    assert "next_task" not in body
    assert (body["data"]["completed"], body["data"]["due_date"]) == (True, "9999-12-15T12:00:00+00:00")
    assert len(client.get("/api/tasks", headers=auth).get_json()["data"]) == 2


def test_a_reminder_that_cannot_move_ends_the_series(app, client, auth, create_task):
    """A stored reminder in the last days of the calendar (say, written by another client) ends the series too."""
    created = create_task(due_date="9998-12-01T00:00:00Z", recurrence_pattern="monthly")
    with get_engine(app).begin() as connection:
        connection.execute(update(task).where(task.c.id == created["id"]).values(remind_at=datetime(9999, 12, 31)))
    response = client.patch(f"/api/tasks/{created['id']}/complete", headers=auth)
    assert response.status_code == 200
    assert "next_task" not in response.get_json()
    assert response.get_json()["data"]["completed"] is True
