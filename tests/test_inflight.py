"""The bound on one user's requests in progress at once, per worker process (RATELIMIT_CONCURRENT_PER_USER).

Requests are held in progress for real: the test locks a task's row in a
transaction of its own, and PUTs to that task wait on the lock inside Postgres
until the test lets it go.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from todo_api.config import from_environment
from todo_api.db.connections import get_engine
from todo_api.ratelimit.limits import get_in_flight

LIMIT = 3


@pytest.fixture
def app(make_app):
    return make_app(RATELIMIT_CONCURRENT_PER_USER=LIMIT)


def waiting_on_locks(app):
    with get_engine(app).connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%UPDATE task%'"
            )
        ).scalar()


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def while_locked(app, task_id, requests, threads, meanwhile):
    """Send `requests` from `threads` threads at once (the `concurrently` fixture) while the test holds the task's
    row lock; `meanwhile()` runs in another thread while they wait, and the lock is let go when it returns.
    Returns (the responses, what `meanwhile` returned)."""
    with get_engine(app).connect() as lock, ThreadPoolExecutor(1) as pool:
        lock.execute(text("BEGIN"))
        lock.execute(text("SELECT id FROM task WHERE id = :id FOR UPDATE"), {"id": task_id})

        def then_release():
            try:
                return meanwhile()
            finally:
                lock.execute(text("COMMIT"))

        seen = pool.submit(then_release)
        responses = requests(threads)
        return responses, seen.result()


@pytest.mark.backends("postgres")  # holds requests on a Postgres row lock
def test_one_request_more_than_the_bound_is_429_at_once_and_the_others_finish(
    app, concurrently, client, auth, other_auth, create_task
):
    task = create_task(title="before")
    answered = []

    def put(each_client):
        response = each_client.put(f"/api/tasks/{task['id']}", json={"title": "after"}, headers=auth)
        answered.append(response.status_code)
        return response

    def meanwhile():
        # LIMIT PUTs wait on the row lock inside Postgres; the one more was refused without waiting.
        wait_until(lambda: waiting_on_locks(app) == LIMIT and answered == [429])
        same_user = app.test_client().get("/api/tasks", headers=auth)
        other_user = app.test_client().get("/api/tasks", headers=other_auth)
        return same_user.status_code, other_user.status_code

    responses, seen = while_locked(app, task["id"], lambda n: concurrently(put, n), LIMIT + 1, meanwhile)
    assert sorted(response.status_code for response in responses) == [200] * LIMIT + [429]
    assert seen == (429, 200)  # the bound is the user's, not the service's
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.get_json() == {"detail": f"Too many requests in progress: at most {LIMIT} at once per user"}
    assert refused.headers["Retry-After"] == "1"
    # Every place was given back: the user is served again, as many at once as before.
    assert client.get(f"/api/tasks/{task['id']}", headers=auth).get_json()["data"]["title"] == "after"
    assert [response.status_code for response in concurrently(put, LIMIT)] == [200] * LIMIT


@pytest.mark.backends("postgres")
def test_a_refused_request_changes_nothing(app, concurrently, client, auth, create_task):
    held, other = create_task(title="held"), create_task(title="untouched")

    def put(each_client):
        return each_client.put(f"/api/tasks/{held['id']}", json={"title": "changed"}, headers=auth)

    def meanwhile():
        wait_until(lambda: waiting_on_locks(app) == LIMIT)
        refused = [
            app.test_client().post("/api/tasks", json={"title": "refused"}, headers=auth),
            app.test_client().delete(f"/api/tasks/{other['id']}", headers=auth),
            app.test_client().patch(f"/api/tasks/{other['id']}/complete", headers=auth),
        ]
        return [response.status_code for response in refused]

    responses, seen = while_locked(app, held["id"], lambda n: concurrently(put, n), LIMIT, meanwhile)
    assert seen == [429, 429, 429]
    assert [response.status_code for response in responses] == [200] * LIMIT
    tasks = client.get("/api/tasks", headers=auth).get_json()["data"]
    assert [(task["title"], task["completed"]) for task in tasks] == [("untouched", False), ("changed", False)]


def test_requests_that_fail_give_their_place_back(app, client, auth, create_task):
    task = create_task()
    failing = [
        ("GET", "/api/tasks/999999", None, {}, 404),
        ("PUT", f"/api/tasks/{task['id']}", {"title": ""}, {}, 422),
        ("PUT", f"/api/tasks/{task['id']}", {"title": "x"}, {"If-Match": '"0-0"'}, 412),
        ("GET", "/api/tasks?limit=0", None, {}, 422),
        ("POST", "/api/tasks", None, {}, 415),
    ]
    for method, path, body, headers, status in failing * 2:  # twice the bound
        response = client.open(path, method=method, json=body, headers={**auth, **headers})
        assert (method, path, response.status_code) == (method, path, status)
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert get_in_flight(app).counts == {}


def test_unauthenticated_requests_count_against_no_one(app, client, auth):
    for _ in range(LIMIT + 1):
        assert client.get("/api/tasks").status_code == 401
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert get_in_flight(app).counts == {}


def test_the_bound_is_off_at_zero_or_with_rate_limits_off(make_app):
    assert get_in_flight(make_app(RATELIMIT_CONCURRENT_PER_USER=0)) is None
    assert get_in_flight(make_app(RATELIMIT_ENABLED=False)) is None


def test_the_bound_defaults_to_three_and_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("RATELIMIT_CONCURRENT_PER_USER", raising=False)
    assert from_environment()["RATELIMIT_CONCURRENT_PER_USER"] == 3
    monkeypatch.setenv("RATELIMIT_CONCURRENT_PER_USER", "8")
    assert from_environment()["RATELIMIT_CONCURRENT_PER_USER"] == 8
    monkeypatch.setenv("RATELIMIT_CONCURRENT_PER_USER", "-1")
    with pytest.raises(RuntimeError, match="RATELIMIT_CONCURRENT_PER_USER"):
        from_environment()
