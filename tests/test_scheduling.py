"""Due dates, recurring tasks and reminders."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from support import StatementLog


def utc(text):
    return datetime.fromisoformat(text).astimezone(UTC).isoformat()


def test_due_date_is_stored_as_utc_with_an_offset(create_task):
    task = create_task(due_date="2026-03-01T10:00:00+02:00")
    assert task["due_date"] == "2026-03-01T08:00:00+00:00"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"due_date": "2026-03-01T10"}, "due_date"),
        ({"due_date": "2026-02-30"}, "due_date"),
        ({"due_date": "2026-03-01T24:00"}, "due_date"),
        ({"due_date": "next week"}, "due_date"),
        ({"due_date": "0001-01-01T00:00:00+01:00"}, "due_date"),
        ({"due_date": "1899-12-31"}, "due_date"),
        ({"remind_at": "20260301"}, "remind_at"),
        ({"remind_at": "2026-03-01 10:00"}, "remind_at"),
        ({"recurrence_pattern": "hourly", "due_date": "2026-03-01T10:00:00Z"}, "recurrence_pattern"),
        ({"recurrence_pattern": "daily"}, "due_date"),
        ({"recurrence_pattern": "daily", "due_date": None}, "due_date"),
    ],
)
def test_bad_schedules_are_422(client, auth, body, field):
    response = client.post("/api/tasks", headers=auth, json={"title": "x", **body})
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == [field]
    assert client.get("/api/tasks", headers=auth).get_json() == {"data": []}


def test_is_recurring_follows_the_pattern(client, auth, create_task):
    task = create_task(recurrence_pattern="weekly", due_date="2026-03-02T09:00:00Z")
    assert (task["recurrence_pattern"], task["is_recurring"]) == ("weekly", True)
    cleared = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"recurrence_pattern": None}).get_json()
    assert (cleared["data"]["recurrence_pattern"], cleared["data"]["is_recurring"]) == (None, False)


@pytest.mark.parametrize(
    ("pattern", "due", "next_due"),
    [
        ("daily", "2026-12-31T23:30:00+00:00", "2027-01-01T23:30:00+00:00"),
        ("weekly", "2026-02-26T09:00:00+00:00", "2026-03-05T09:00:00+00:00"),
        ("monthly", "2025-01-31T09:00:00+00:00", "2025-02-28T09:00:00+00:00"),
        ("monthly", "2024-01-31T09:00:00+00:00", "2024-02-29T09:00:00+00:00"),
        ("monthly", "2026-03-31T09:00:00+00:00", "2026-04-30T09:00:00+00:00"),
        ("yearly", "2024-02-29T09:00:00+00:00", "2025-02-28T09:00:00+00:00"),
        ("yearly", "2027-03-01T09:00:00+00:00", "2028-03-01T09:00:00+00:00"),
    ],
)
def test_completing_a_recurring_task_creates_the_next_occurrence(client, auth, create_task, pattern, due, next_due):
    task = create_task(title="Water plants", recurrence_pattern=pattern, due_date=due, tags=["home"], priority="high")
    response = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["data"]["id"] == task["id"]
    assert body["data"]["completed"] is True
    following = body["next_task"]
    assert following["id"] != task["id"]
    assert following["due_date"] == next_due
    assert following["completed"] is False
    assert (following["title"], following["tags"], following["priority"]) == ("Water plants", ["home"], "high")
    assert following["recurrence_pattern"] == pattern
    listed = client.get("/api/tasks", headers=auth).get_json()["data"]
    assert [t["id"] for t in listed] == [following["id"], task["id"]]


def test_completing_by_setting_is_safe_to_retry(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    first = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json={"completed": True}).get_json()
    assert first["next_task"]["due_date"] == "2026-05-02T08:00:00+00:00"
    retry = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json={"completed": True}).get_json()
    assert retry["data"]["completed"] is True
    assert "next_task" not in retry
    assert len(client.get("/api/tasks", headers=auth).get_json()["data"]) == 2


def test_completing_by_put_creates_the_next_occurrence(client, auth, create_task):
    task = create_task(recurrence_pattern="monthly", due_date="2026-01-31T12:00:00Z")
    body = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"completed": True, "title": "Rent"}).get_json()
    assert body["data"]["completed"] is True
    assert (body["next_task"]["title"], body["next_task"]["due_date"]) == ("Rent", "2026-02-28T12:00:00+00:00")


def test_renaming_a_recurring_task_creates_nothing(client, auth, create_task):
    task = create_task(recurrence_pattern="weekly", due_date="2026-05-01T08:00:00Z")
    body = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"title": "Renamed"}).get_json()
    assert (body["data"]["title"], body["data"]["completed"], body["data"]["is_recurring"]) == ("Renamed", False, True)
    assert "next_task" not in body
    assert len(client.get("/api/tasks", headers=auth).get_json()["data"]) == 1


def test_completing_a_completed_recurring_task_by_put_creates_nothing(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    first = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"completed": True}).get_json()
    again = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"completed": True}).get_json()
    assert first["next_task"]["due_date"] == "2026-05-02T08:00:00+00:00"
    assert (again["data"]["completed"], "next_task" in again) == (True, False)
    assert len(client.get("/api/tasks", headers=auth).get_json()["data"]) == 2


def test_completing_a_plain_task_by_put(client, auth, create_task):
    task = create_task(title="Plain")
    body = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"completed": True, "tags": ["x"]}).get_json()
    assert (body["data"]["completed"], body["data"]["tags"], "next_task" in body) == (True, ["x"], False)
    assert body["data"]["updated_at"] > task["updated_at"]


def test_uncompleting_creates_nothing(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    client.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json={"completed": True})
    body = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json={"completed": False}).get_json()
    assert body["data"]["completed"] is False
    assert "next_task" not in body


def test_non_recurring_completion_has_no_next_task(client, auth, create_task):
    task = create_task(due_date="2026-05-01T08:00:00Z")
    body = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()
    assert body["data"]["completed"] is True
    assert "next_task" not in body


def test_reminder_keeps_its_distance_from_the_due_date(client, auth, create_task):
    task = create_task(recurrence_pattern="weekly", due_date="2026-05-01T08:00:00Z", remind_at="2026-05-01T07:30:00Z")
    client.patch(f"/api/tasks/{task['id']}/mark-reminder-sent", headers=auth)
    following = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()["next_task"]
    assert (following["remind_at"], following["reminder_sent"]) == ("2026-05-08T07:30:00+00:00", False)


@pytest.mark.parametrize(
    "changes",
    [{"recurrence_pattern": "daily"}, {"recurrence_pattern": "weekly", "due_date": None}],
)
def test_update_that_leaves_a_recurring_task_without_due_date_is_422(client, auth, create_task, changes):
    plain = create_task()
    response = client.put(f"/api/tasks/{plain['id']}", headers=auth, json=changes)
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"due_date": ["A recurring task needs a due date."]}
    assert client.get(f"/api/tasks/{plain['id']}", headers=auth).get_json() == {"data": plain}


def test_recurring_task_loses_its_due_date_only_with_its_pattern(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    assert client.put(f"/api/tasks/{task['id']}", headers=auth, json={"due_date": None}).status_code == 422
    both = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"due_date": None, "recurrence_pattern": None})
    assert both.status_code == 200
    assert (both.get_json()["data"]["due_date"], both.get_json()["data"]["is_recurring"]) == (None, False)


def test_reminders_come_due_and_are_marked_sent(client, auth, create_task):
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    due = create_task(title="due", remind_at=past)
    create_task(title="later", remind_at=future)
    create_task(title="none")
    listed = client.get("/api/tasks?reminder_due=true", headers=auth).get_json()["data"]
    assert [t["title"] for t in listed] == ["due"]

    marked = client.patch(f"/api/tasks/{due['id']}/mark-reminder-sent", headers=auth)
    assert marked.status_code == 200
    assert marked.get_json()["data"]["reminder_sent"] is True
    assert client.get("/api/tasks?reminder_due=true", headers=auth).get_json() == {"data": []}

    same = client.put(f"/api/tasks/{due['id']}", headers=auth, json={"remind_at": utc(past)})
    assert same.get_json()["data"]["reminder_sent"] is True
    moved = client.put(f"/api/tasks/{due['id']}", headers=auth, json={"remind_at": future})
    assert moved.get_json()["data"]["reminder_sent"] is False


def test_mark_reminder_sent_is_scoped_to_the_owner(client, auth, other_auth, create_task):
    task = create_task(remind_at="2026-01-01T00:00:00Z")
    response = client.patch(f"/api/tasks/{task['id']}/mark-reminder-sent", headers=other_auth)
    assert response.status_code == 404
    assert response.get_json() == {"detail": "Task not found"}
    assert client.get(f"/api/tasks/{task['id']}", headers=auth).get_json()["data"]["reminder_sent"] is False


def test_recurring_toggle_from_another_user_creates_nothing(client, auth, other_auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    assert client.patch(f"/api/tasks/{task['id']}/complete", headers=other_auth).status_code == 404
    assert client.get("/api/tasks", headers=auth).get_json() == {"data": [task]}


def test_concurrent_completions_create_one_next_occurrence(app, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    barrier = threading.Barrier(10)

    def complete(_):
        client = app.test_client()
        barrier.wait()
        response = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json={"completed": True})
        return response.status_code, "next_task" in response.get_json()

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(complete, range(10)))
    assert sorted(results) == [(200, False)] * 9 + [(200, True)]
    listed = app.test_client().get("/api/tasks", headers=auth).get_json()["data"]
    assert [(t["due_date"], t["completed"]) for t in listed] == [
        ("2026-05-02T08:00:00+00:00", False),
        ("2026-05-01T08:00:00+00:00", True),
    ]


# -- One next occurrence per occurrence ---------------------------------------------


def listed(client, auth):
    """(id, due date, completed) of every task of the caller, newest first."""
    tasks = client.get("/api/tasks", headers=auth).get_json()["data"]
    return [(task["id"], task["due_date"], task["completed"]) for task in tasks]


def test_toggling_a_recurring_task_five_times_makes_one_next_occurrence(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    answers = [client.patch(f"/api/tasks/{task['id']}/complete", headers=auth) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200] * 5
    bodies = [answer.get_json() for answer in answers]
    assert [body["data"]["completed"] for body in bodies] == [True, False, True, False, True]
    assert ["next_task" in body for body in bodies] == [True, False, False, False, False]
    following = bodies[0]["next_task"]
    assert listed(client, auth) == [
        (following["id"], "2026-05-02T08:00:00+00:00", False),
        (task["id"], "2026-05-01T08:00:00+00:00", True),
    ]


def test_completing_again_by_every_route_makes_nothing_more(client, auth, create_task):
    task = create_task(recurrence_pattern="weekly", due_date="2026-05-01T08:00:00Z")
    path = f"/api/tasks/{task['id']}"
    writes = [
        ("PATCH", f"{path}/complete", {"completed": True}),
        ("PATCH", f"{path}/complete", {"completed": False}),
        ("PUT", path, {"completed": True, "title": "Again"}),
        ("PUT", path, {"completed": False}),
        ("PATCH", f"{path}/complete", None),
        ("PATCH", f"{path}/complete", None),
        ("PATCH", f"{path}/complete", {"completed": True}),
        ("PATCH", f"{path}/complete", {"completed": True}),
    ]
    bodies = [client.open(url, method=method, headers=auth, json=body).get_json() for method, url, body in writes]
    assert [body["data"]["completed"] for body in bodies] == [True, False, True, False, True, False, True, True]
    assert ["next_task" in body for body in bodies] == [True, False, False, False, False, False, False, False]
    following = bodies[0]["next_task"]
    assert listed(client, auth) == [
        (following["id"], "2026-05-08T08:00:00+00:00", False),
        (task["id"], "2026-05-01T08:00:00+00:00", True),
    ]


def test_a_reopened_occurrence_moved_and_completed_again_keeps_its_next_occurrence(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    following = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()["next_task"]
    client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    moved = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"due_date": "2026-05-10T08:00:00Z"})
    assert moved.status_code == 200
    again = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()
    assert (again["data"]["completed"], "next_task" in again) == (True, False)
    assert listed(client, auth) == [
        (following["id"], "2026-05-02T08:00:00+00:00", False),
        (task["id"], "2026-05-10T08:00:00+00:00", True),
    ]


def test_a_deleted_next_occurrence_is_made_again_by_the_next_completion(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    first = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()["next_task"]
    assert client.delete(f"/api/tasks/{first['id']}", headers=auth).status_code == 200
    assert "next_task" not in client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()  # reopened
    remade = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()["next_task"]
    assert (remade["due_date"], remade["completed"]) == ("2026-05-02T08:00:00+00:00", False)
    for _ in range(3):
        assert "next_task" not in client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()
    assert listed(client, auth) == [
        (remade["id"], "2026-05-02T08:00:00+00:00", False),
        (task["id"], "2026-05-01T08:00:00+00:00", False),
    ]


def test_each_occurrence_of_a_series_makes_its_own_one_next_occurrence(client, auth, create_task):
    first = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    second = client.patch(f"/api/tasks/{first['id']}/complete", headers=auth).get_json()["next_task"]
    third = client.patch(f"/api/tasks/{second['id']}/complete", headers=auth).get_json()["next_task"]
    for task_id in (first["id"], second["id"], first["id"], second["id"]):
        client.patch(f"/api/tasks/{task_id}/complete", headers=auth, json={"completed": False})
        body = client.patch(f"/api/tasks/{task_id}/complete", headers=auth, json={"completed": True}).get_json()
        assert "next_task" not in body
    assert listed(client, auth) == [
        (third["id"], "2026-05-03T08:00:00+00:00", False),
        (second["id"], "2026-05-02T08:00:00+00:00", True),
        (first["id"], "2026-05-01T08:00:00+00:00", True),
    ]


def test_a_completion_that_makes_nothing_takes_no_task_id(client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    following = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).get_json()["next_task"]
    for _ in range(6):
        client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    assert create_task(title="after")["id"] == following["id"] + 1


def test_completions_cost_the_statements_they_did(app, client, auth, create_task):
    """A completion that makes nothing costs what one that makes the next occurrence does (its INSERT inserts
    nothing); a plain task's toggle stays one statement."""
    recurring = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    plain = create_task()
    completing = ["UPDATE", "BEGIN", "SELECT", "UPDATE", "SELECT", "INSERT", "COMMIT"]
    reopening = ["UPDATE", "BEGIN", "SELECT", "UPDATE", "COMMIT"]
    writes = [
        (recurring["id"], None, completing),
        (recurring["id"], None, reopening),
        (recurring["id"], {"completed": True}, completing),
        (recurring["id"], None, reopening),
        (plain["id"], None, ["UPDATE"]),
        (plain["id"], None, ["UPDATE"]),
    ]
    log = StatementLog(app)
    try:
        for task_id, body, statements in writes:
            log.statements.clear()
            assert client.patch(f"/api/tasks/{task_id}/complete", headers=auth, json=body).status_code == 200
            assert log.statements == statements, (task_id, body)
    finally:
        log.close()
