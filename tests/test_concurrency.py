"""Concurrent requests on one task: every change is applied exactly once."""
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

THREADS = 20


def concurrently(app, request):
    """Run `request(client)` from THREADS threads at once, each with its own client; return the responses."""
    barrier = threading.Barrier(THREADS, timeout=30)

    def run(_):
        client = app.test_client()
        barrier.wait()
        return request(client)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(run, range(THREADS)))


def test_concurrent_toggles_lose_no_update(app, client, auth, create_task):
    task_id = create_task()["id"]
    responses = concurrently(app, lambda c: c.patch(f"/api/tasks/{task_id}/complete", headers=auth))
    assert [response.status_code for response in responses] == [200] * THREADS
    seen = Counter(response.get_json()["data"]["completed"] for response in responses)
    assert seen == {True: THREADS // 2, False: THREADS // 2}
    assert client.get(f"/api/tasks/{task_id}", headers=auth).get_json()["data"]["completed"] is False


def test_concurrent_creates_get_distinct_ids(app, client, auth):
    responses = concurrently(app, lambda c: c.post("/api/tasks", headers=auth, json={"title": "parallel"}))
    assert [response.status_code for response in responses] == [200] * THREADS
    ids = {response.get_json()["data"]["id"] for response in responses}
    assert len(ids) == THREADS
    listed = client.get("/api/tasks", headers=auth, query_string={"limit": 200}).get_json()["data"]
    assert {task["id"] for task in listed} == ids
