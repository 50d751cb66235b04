"""Concurrent requests on one task: every change is applied exactly once."""

import threading
from collections import Counter

THREADS = 20


def test_concurrent_toggles_lose_no_update(concurrently, client, auth, create_task):
    task_id = create_task()["id"]
    responses = concurrently(lambda c: c.patch(f"/api/tasks/{task_id}/complete", headers=auth), THREADS)
    assert [response.status_code for response in responses] == [200] * THREADS
    seen = Counter(response.get_json()["data"]["completed"] for response in responses)
    assert seen == {True: THREADS // 2, False: THREADS // 2}
    assert client.get(f"/api/tasks/{task_id}", headers=auth).get_json()["data"]["completed"] is False


def test_concurrent_creates_get_distinct_ids(concurrently, client, auth):
    responses = concurrently(lambda c: c.post("/api/tasks", headers=auth, json={"title": "parallel"}), THREADS)
    assert [response.status_code for response in responses] == [200] * THREADS
    ids = {response.get_json()["data"]["id"] for response in responses}
    assert len(ids) == THREADS
    listed = client.get("/api/tasks", headers=auth, query_string={"limit": 200}).get_json()["data"]
    assert {task["id"] for task in listed} == ids


def next_occurrences(responses):
    """The next occurrences the responses show, in the order of the responses."""
    return [body["next_task"] for body in (response.get_json() for response in responses) if "next_task" in body]


def listed(client, auth):
    tasks = client.get("/api/tasks", headers=auth).get_json()["data"]
    return [(task["id"], task["due_date"], task["completed"]) for task in tasks]


def test_concurrent_toggles_of_a_recurring_task_make_one_next_occurrence(concurrently, client, auth, create_task):
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    responses = concurrently(lambda c: c.patch(f"/api/tasks/{task['id']}/complete", headers=auth), THREADS)
    assert [response.status_code for response in responses] == [200] * THREADS
    seen = Counter(response.get_json()["data"]["completed"] for response in responses)
    assert seen == {True: THREADS // 2, False: THREADS // 2}
    made = next_occurrences(responses)
    assert [(following["due_date"], following["completed"]) for following in made] == [
        ("2026-05-02T08:00:00+00:00", False)
    ]
    assert listed(client, auth) == [
        (made[0]["id"], "2026-05-02T08:00:00+00:00", False),
        (task["id"], "2026-05-01T08:00:00+00:00", False),
    ]


def test_concurrent_completions_of_a_recurring_task_make_one_next_occurrence(concurrently, client, auth, create_task):
    task = create_task(recurrence_pattern="weekly", due_date="2026-05-01T08:00:00Z")
    body = {"completed": True}
    responses = concurrently(lambda c: c.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json=body), THREADS)
    assert [(response.status_code, response.get_json()["data"]["completed"]) for response in responses] == [
        (200, True)
    ] * THREADS
    made = next_occurrences(responses)
    assert [following["due_date"] for following in made] == ["2026-05-08T08:00:00+00:00"]
    assert listed(client, auth) == [
        (made[0]["id"], "2026-05-08T08:00:00+00:00", False),
        (task["id"], "2026-05-01T08:00:00+00:00", True),
    ]


def test_concurrent_completes_reopens_and_toggles_make_one_next_occurrence(concurrently, client, auth, create_task):
    """Every way of completing and reopening at once, five of each: one next occurrence, made by a completion."""
    task = create_task(recurrence_pattern="daily", due_date="2026-05-01T08:00:00Z")
    path = f"/api/tasks/{task['id']}"
    writes = [
        ("PATCH", f"{path}/complete", None),
        ("PATCH", f"{path}/complete", {"completed": True}),
        ("PATCH", f"{path}/complete", {"completed": False}),
        ("PUT", path, {"completed": True}),
    ] * (THREADS // 4)
    claimed = iter(range(THREADS))
    lock = threading.Lock()

    def write(c):
        with lock:
            method, url, body = writes[next(claimed)]
        return c.open(url, method=method, headers=auth, json=body)

    responses = concurrently(write, THREADS)
    assert [response.status_code for response in responses] == [200] * THREADS
    bodies = [response.get_json() for response in responses]
    made = [(body["data"]["completed"], body["next_task"]) for body in bodies if "next_task" in body]
    assert [(completed, following["due_date"]) for completed, following in made] == [
        (True, "2026-05-02T08:00:00+00:00")
    ]
    tasks = listed(client, auth)
    assert [(task_id, due) for task_id, due, _ in tasks] == [
        (made[0][1]["id"], "2026-05-02T08:00:00+00:00"),
        (task["id"], "2026-05-01T08:00:00+00:00"),
    ]
    assert tasks[0][2] is False  # the next occurrence is open; the occurrence is as the last write left it
