"""What one user's requests may hold of a worker process at once (todo_api/bounds.py): places per user
(RATELIMIT_CONCURRENT_PER_USER), waited for rather than refused, and the heavy slot large pages are made in.

Requests are held in progress for real: the test locks a task's row in a
transaction of its own, and PUTs to that task wait on the lock inside Postgres
until the test lets it go; or the test takes the heavy slot itself.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from todo_api.config import from_environment
from todo_api.db.connections import get_engine
from todo_api.ratelimit import bounds

LIMIT = 3
WAIT_SECONDS = 2


@pytest.fixture
def app(make_app):
    return make_app(RATELIMIT_CONCURRENT_PER_USER=LIMIT, RATELIMIT_WAIT_SECONDS=WAIT_SECONDS)


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


def waiting_for_places(app, user_id):
    """How many of the user's requests hold or wait for one of their places in this process."""
    place = bounds.get_user_places(app).held.get(user_id)
    return 0 if place is None else place.users


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


# -- Places per user -----------------------------------------------------------------


@pytest.mark.backends("postgres")  # holds requests on a Postgres row lock
def test_requests_over_the_bound_wait_for_a_place_and_all_finish(
    app, concurrently, client, auth, other_auth, create_task
):
    task = create_task(title="before")
    user_id = client.get("/api/tasks", headers=auth).get_json()["data"][0]["user_id"]
    answered = []

    def put(each_client):
        response = each_client.put(f"/api/tasks/{task['id']}", json={"title": "after"}, headers=auth)
        answered.append(response.status_code)
        return response

    def meanwhile():
        # LIMIT PUTs wait on the row lock inside Postgres; the 2 more wait for a place, none is refused.
        wait_until(lambda: waiting_on_locks(app) == LIMIT and waiting_for_places(app, user_id) == LIMIT + 2)
        time.sleep(0.2)
        still = (waiting_on_locks(app), answered[:])
        other_user = app.test_client().get("/api/tasks", headers=other_auth)  # the bound is the user's
        return still, other_user.status_code

    responses, (still, other_user) = while_locked(app, task["id"], lambda n: concurrently(put, n), LIMIT + 2, meanwhile)
    assert still == (LIMIT, [])
    assert other_user == 200
    assert [response.status_code for response in responses] == [200] * (LIMIT + 2)
    # Every place was given back.
    assert bounds.get_user_places(app).held == {}
    assert client.get(f"/api/tasks/{task['id']}", headers=auth).get_json()["data"]["title"] == "after"


@pytest.mark.backends("postgres")
def test_a_request_that_waits_too_long_for_a_place_is_429_and_changes_nothing(
    app, concurrently, client, auth, create_task
):
    held, other = create_task(title="held"), create_task(title="untouched")

    def put(each_client):
        return each_client.put(f"/api/tasks/{held['id']}", json={"title": "changed"}, headers=auth)

    def meanwhile():
        wait_until(lambda: waiting_on_locks(app) == LIMIT)
        sends = [
            lambda: app.test_client().post("/api/tasks", json={"title": "refused"}, headers=auth),
            lambda: app.test_client().delete(f"/api/tasks/{other['id']}", headers=auth),
            lambda: app.test_client().patch(f"/api/tasks/{other['id']}/complete", headers=auth),
        ]
        with ThreadPoolExecutor(len(sends)) as pool:
            return list(pool.map(lambda send: send(), sends))

    responses, refused = while_locked(app, held["id"], lambda n: concurrently(put, n), LIMIT, meanwhile)
    assert [response.status_code for response in responses] == [200] * LIMIT
    for response in refused:
        assert response.status_code == 429
        assert response.get_json() == {
            "detail": f"Too many requests in progress: at most {LIMIT} at once per user, and none ended within "
            f"{WAIT_SECONDS} s"
        }
        assert response.headers["Retry-After"] == "1"
    tasks = client.get("/api/tasks", headers=auth).get_json()["data"]
    assert [(task["title"], task["completed"]) for task in tasks] == [("untouched", False), ("changed", False)]
    assert bounds.get_user_places(app).held == {}


@pytest.mark.backends("postgres")
def test_a_request_waiting_for_a_place_holds_no_database_connection(app, auth, client, create_task):
    """filter-sort looks the session up (a connection) before it takes a place: waiting, it gives it back, so the
    pool keeps connections for the requests holding places."""
    create_task(title="only")
    user_id = client.get("/api/tasks", headers=auth).get_json()["data"][0]["user_id"]
    places, pool = bounds.get_user_places(app), get_engine(app).pool
    for _ in range(LIMIT):
        assert places.enter(user_id)
    answered = []
    waiting = threading.Thread(
        target=lambda: answered.append(app.test_client().get("/api/tasks/filter-sort", headers=auth))
    )
    checked_out = pool.checkedout()
    waiting.start()
    try:
        wait_until(lambda: waiting_for_places(app, user_id) == LIMIT + 1)
        time.sleep(0.2)
        assert pool.checkedout() == checked_out
    finally:
        for _ in range(LIMIT):
            places.leave(user_id)
        waiting.join()
    assert [(response.status_code, len(response.get_json()["data"])) for response in answered] == [(200, 1)]


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
    assert bounds.get_user_places(app).held == {}


def test_unauthenticated_requests_take_no_place(app, client, auth):
    for _ in range(LIMIT + 1):
        assert client.get("/api/tasks").status_code == 401
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert bounds.get_user_places(app).held == {}


def test_places_are_given_in_turn_and_forgotten_when_none_is_held():
    places = bounds.UserPlaces(2, wait_seconds=0.2)
    before_waiting = []
    entered = [places.enter(user, lambda user=user: before_waiting.append(user)) for user in ("a", "a", "b")]
    assert (entered, before_waiting) == ([True, True, True], [])
    started = time.monotonic()
    assert places.enter("a", lambda: before_waiting.append("a")) is False  # waited 0.2 s for a place in vain
    assert before_waiting == ["a"]
    assert time.monotonic() - started >= 0.2
    assert (places.held["a"].users, places.held["b"].users) == (2, 1)
    got = []
    waiter = threading.Thread(target=lambda: got.append(places.enter("a")))
    waiter.start()
    wait_until(lambda: places.held["a"].users == 3)
    places.leave("a")  # the waiting one takes this place
    waiter.join()
    assert got == [True]
    for user in ("a", "a", "b"):
        places.leave(user)
    assert places.held == {}


def test_the_bound_is_off_at_zero_or_with_rate_limits_off(make_app):
    assert bounds.get_user_places(make_app(RATELIMIT_CONCURRENT_PER_USER=0)) is None
    assert bounds.get_user_places(make_app(RATELIMIT_ENABLED=False)) is None


def test_the_settings_default_to_three_places_and_five_seconds_and_are_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("RATELIMIT_CONCURRENT_PER_USER", raising=False)
    monkeypatch.delenv("RATELIMIT_WAIT_SECONDS", raising=False)
    config = from_environment()
    assert (config["RATELIMIT_CONCURRENT_PER_USER"], config["RATELIMIT_WAIT_SECONDS"]) == (3, 5)
    monkeypatch.setenv("RATELIMIT_CONCURRENT_PER_USER", "8")
    monkeypatch.setenv("RATELIMIT_WAIT_SECONDS", "2")
    config = from_environment()
    assert (config["RATELIMIT_CONCURRENT_PER_USER"], config["RATELIMIT_WAIT_SECONDS"]) == (8, 2)
    for name, value in (("RATELIMIT_CONCURRENT_PER_USER", "-1"), ("RATELIMIT_WAIT_SECONDS", "0")):
        monkeypatch.setenv(name, value)
        with pytest.raises(RuntimeError, match=name):
            from_environment()
        monkeypatch.delenv(name)


# -- The heavy slot -------------------------------------------------------------------


def create_tasks(client, headers, count, description_length):
    for index in range(count):
        body = {"title": f"task {index}", "description": "d" * description_length}
        assert client.post("/api/tasks", headers=headers, json=body).status_code == 200


@pytest.fixture
def heavy_app(make_app):
    return make_app(RATELIMIT_WAIT_SECONDS=0.5)


def test_a_large_page_waits_for_the_heavy_slot_while_small_ones_do_not(heavy_app, auth, other_auth):
    """10 tasks of 8,000 characters make a large page (over 64 KiB); 10 short ones do not."""
    client = heavy_app.test_client()
    create_tasks(client, auth, 10, 8000)
    create_tasks(client, other_auth, 10, 10)
    heavy = bounds.get_heavy_work(heavy_app)
    heavy.acquire()  # as a large page being made
    try:
        started = time.monotonic()
        busy = client.get("/api/tasks", headers=auth)
        waited = time.monotonic() - started
        small = client.get("/api/tasks", headers=other_auth)
        single = client.get("/api/tasks", headers=auth, query_string={"limit": 5})
    finally:
        heavy.release()
    assert (busy.status_code, busy.get_json(), busy.headers["Retry-After"]) == (
        503,
        {"detail": "The service is busy with large pages; try again"},
        "1",
    )
    assert waited >= 0.5
    assert (small.status_code, len(small.get_json()["data"])) == (200, 10)
    # The user's pages are now known to be large: even a small one waits for the slot, from before its statement.
    assert single.status_code == 503
    assert [
        len(client.get("/api/tasks", headers=auth, query_string=q).get_json()["data"]) for q in ({}, {"limit": 5})
    ] == [10, 5]
    assert heavy.slot.acquire(blocking=False)  # given back every time
    heavy.release()


def test_a_page_that_turns_out_large_takes_the_slot_once_its_rows_are_in(heavy_app, auth):
    client = heavy_app.test_client()
    create_tasks(client, auth, 10, 8000)
    heavy = bounds.get_heavy_work(heavy_app)
    assert heavy.large_pages == {}
    seen = []
    real_acquire = heavy.acquire

    def acquire():
        seen.append(dict(heavy.large_pages))
        real_acquire()

    heavy.acquire = acquire
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert client.get("/api/tasks", headers=auth).status_code == 200
    user_id = client.get("/api/tasks", headers=auth).get_json()["data"][0]["user_id"]
    # First: taken after the rows turned out large (and the user remembered); then before the statement.
    assert [list(remembered) for remembered in seen] == [[user_id], [user_id], [user_id]]
    assert heavy.slot.acquire(blocking=False)
    heavy.release()


def test_whether_rows_make_a_large_page_is_told_from_their_texts():
    class Row:
        def __init__(self, description, tags=()):
            self.title, self.description, self.tags = "t", description, list(tags)

    assert not bounds.is_large([Row("d" * 5000)] * 10)  # about 56 KB
    assert bounds.is_large([Row("d" * 6000)] * 10)  # about 66 KB
    assert bounds.is_large([Row(None, ["t" * 50] * 50)] * 30)  # tags: about 78 KB
    assert not bounds.is_large([Row(None)] * 100)  # 100 short tasks: about 60 KB
    assert not bounds.is_large([])
