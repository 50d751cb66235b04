"""A client's bursts, under the shipped bounds: one user's requests sent at once are all answered as the reference
answers them (waiting for one of the user's places, never refused), on every backend.

The app is built with the shipped settings: rate limits on at their defaults,
and RATELIMIT_CONCURRENT_PER_USER at its default (3 places per user), so most
of each burst waits for a place.
"""

from collections import Counter

import pytest

from todo_api import config
from todo_api.ratelimit import bounds


@pytest.fixture
def app(make_app):
    return make_app(
        RATELIMIT_ENABLED=True,
        RATELIMIT_PER_USER=config.DEFAULT_RATELIMIT_PER_USER,
        RATELIMIT_KIB_PER_USER=config.DEFAULT_RATELIMIT_KIB_PER_USER,
        RATELIMIT_CONCURRENT_PER_USER=config.DEFAULT_CONCURRENT_PER_USER,
        RATELIMIT_WAIT_SECONDS=config.DEFAULT_WAIT_SECONDS,
    )


def listed(client, auth):
    return client.get("/api/tasks", headers=auth).get_json()["data"]


def test_fifty_creates_at_once_are_all_created(app, concurrently, client, auth):
    responses = concurrently(lambda c: c.post("/api/tasks", headers=auth, json={"title": "burst"}), 50)
    assert [response.status_code for response in responses] == [200] * 50
    created = {response.get_json()["data"]["id"] for response in responses}
    assert len(created) == 50
    assert {task["id"] for task in listed(client, auth)} == created
    assert bounds.get_user_places(app).held == {}


def test_twenty_toggles_at_once_are_all_applied(app, concurrently, client, auth, create_task):
    task_id = create_task()["id"]
    responses = concurrently(lambda c: c.patch(f"/api/tasks/{task_id}/complete", headers=auth), 20)
    assert [response.status_code for response in responses] == [200] * 20
    assert Counter(response.get_json()["data"]["completed"] for response in responses) == {True: 10, False: 10}
    assert client.get(f"/api/tasks/{task_id}", headers=auth).get_json()["data"]["completed"] is False


def test_eight_retries_of_one_create_at_once_answer_the_same_task(app, concurrently, client, auth):
    headers = {**auth, "Idempotency-Key": "import-row-1"}
    responses = concurrently(lambda c: c.post("/api/tasks", headers=headers, json={"title": "once"}), 8)
    assert [response.status_code for response in responses] == [200] * 8
    assert len({response.data for response in responses}) == 1
    assert sum("Idempotent-Replayed" not in response.headers for response in responses) == 1
    assert [task["title"] for task in listed(client, auth)] == ["once"]


def test_eight_conditional_writes_at_once_apply_one(app, concurrently, client, auth, create_task):
    task_id = create_task(title="before")["id"]
    etag = client.get(f"/api/tasks/{task_id}", headers=auth).headers["ETag"]
    headers = {**auth, "If-Match": etag}
    responses = concurrently(lambda c: c.put(f"/api/tasks/{task_id}", headers=headers, json={"title": "after"}), 8)
    assert Counter(response.status_code for response in responses) == {200: 1, 412: 7}
    assert client.get(f"/api/tasks/{task_id}", headers=auth).get_json()["data"]["title"] == "after"


def test_an_import_and_lists_at_once_are_all_answered(app, concurrently, client, auth, create_task):
    """The frontend's import: 8 creates at once, while 6 lists are asked for."""
    create_task(title="first")
    numbers = iter(range(14))  # one to each thread

    def send(each_client):
        number = next(numbers)
        if number < 8:
            return each_client.post("/api/tasks", headers=auth, json={"title": f"imported {number}"})
        return each_client.get("/api/tasks", headers=auth)

    responses = concurrently(send, 14)
    assert [response.status_code for response in responses] == [200] * 14
    assert len(listed(client, auth)) == 9
