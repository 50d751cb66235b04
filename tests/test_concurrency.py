"""Concurrent requests on one task: every change is applied exactly once."""

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
