"""The database goes away and comes back, on a Postgres cluster of the drills' own.

It is stopped, does not answer at all, restarts while the service is idle, and
restarts under a write load through gunicorn (cleanly and by crash). In every
drill: no answer is a 500, an outage is a 503 with Retry-After (never a 401),
every create that was answered 200 is stored, the service recovers without a
restart of its own, and no log line holds a session token, a part of one, or a
value a client sent.
Each drill prints its figures (run pytest with -s to see them).
"""

import http.client
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from drills.harness import Service, SilentServer, WriteLoad, assert_no_secrets, stored_titles, unique_title
from support import base_config
from todo_api import create_app
from todo_api.db.connections import get_engine

pytestmark = pytest.mark.postgres

CONNECT_TIMEOUT = 1
# What an answer may take beyond the connect timeout: the app's own work on a loaded 2-core machine.
MARGIN = 1.5


# -- Drill 1: the database is down, then back --------------------------------


def api_calls(task_id, prefix):
    """One request on every /api route; the writes carry unique titles to look for afterwards."""
    return [
        ("GET", "/api/tasks", None),
        ("GET", "/api/tasks/search?keyword=milk", None),
        ("GET", "/api/tasks/filter-sort?status=pending", None),
        ("POST", "/api/tasks", {"title": unique_title(prefix)}),
        ("GET", f"/api/tasks/{task_id}", None),
        ("PUT", f"/api/tasks/{task_id}", {"title": unique_title(prefix)}),
        ("PATCH", f"/api/tasks/{task_id}/complete", {"completed": True}),
        ("PATCH", f"/api/tasks/{task_id}/mark-reminder-sent", None),
        ("DELETE", f"/api/tasks/{task_id}", None),
    ]


def call_all_at_once(app, calls, token):
    """Send every call from its own thread at once; return (call, response, seconds) for each."""
    headers = {"Authorization": f"Bearer {token}"}

    def send(call):
        method, path, body = call
        started = time.monotonic()
        response = app.test_client().open(path, method=method, json=body, headers=headers)
        return call, response, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(send, calls))


def assert_all_unavailable(results, bound):
    for (method, path, _), response, seconds in results:
        assert (method, path, response.status_code) == (method, path, 503)
        assert response.get_json() == {"detail": "Service temporarily unavailable"}
        assert response.headers["Retry-After"] == "5"
        assert seconds < bound, f"{method} {path} took {seconds:.2f} s, over {bound} s"


def titles_sent(calls):
    return [body["title"] for _, _, body in calls if body and "title" in body]


def test_database_stopped_every_route_is_503_then_200_when_it_is_back(cluster, session_on, sql, caplog):
    caplog.set_level(logging.INFO)
    token = session_on()
    app = create_app(base_config(cluster.url, DATABASE_CONNECT_TIMEOUT=CONNECT_TIMEOUT))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    task_id = client.post("/api/tasks", headers=headers, json={"title": "kept"}).get_json()["data"]["id"]
    assert client.get("/health/ready").status_code == 200

    started = time.monotonic()
    cluster.stop("fast")
    try:
        calls = api_calls(task_id, "outage")
        results = call_all_at_once(app, calls, token)
        assert_all_unavailable(results, CONNECT_TIMEOUT + MARGIN)
        assert client.get("/health").status_code == 200
        ready = client.get("/health/ready")
        assert (ready.status_code, ready.headers["Retry-After"]) == (503, "5")
        slowest = max(seconds for _, _, seconds in results)
    finally:
        cluster.start()
    outage = time.monotonic() - started

    # The same app, no restart: the pool's connections from before the outage are replaced.
    assert client.get("/health/ready").status_code == 200
    for method, path, body in api_calls(task_id, "recovered"):
        response = client.open(path, method=method, json=body, headers=headers)
        assert (method, path, response.status_code) == (method, path, 200)
    assert stored_titles(sql, "outage-") == {}  # nothing a 503 answered was written
    assert_no_secrets(caplog.text, [token], titles_sent(calls))
    get_engine(app).dispose()
    print(
        f"\n[drill: database stopped] {len(results)} routes: 503 x {len(results)}, slowest {slowest:.3f} s; "
        f"outage and recovery {outage:.1f} s"
    )


def test_database_not_answering_is_503_within_the_connect_timeout(cluster, session_on, caplog):
    caplog.set_level(logging.INFO)
    token = session_on()
    silent = SilentServer()
    try:
        app = create_app(
            base_config(
                f"postgresql://postgres@127.0.0.1:{silent.port}/postgres", DATABASE_CONNECT_TIMEOUT=CONNECT_TIMEOUT
            )
        )
        calls = api_calls(1, "silent")
        results = call_all_at_once(app, calls, token)
        assert_all_unavailable(results, CONNECT_TIMEOUT + MARGIN)
        client = app.test_client()
        assert client.get("/health").status_code == 200
        started = time.monotonic()
        assert client.get("/health/ready").status_code == 503
        assert time.monotonic() - started < CONNECT_TIMEOUT + MARGIN
        get_engine(app).dispose()
    finally:
        silent.close()
    assert_no_secrets(caplog.text, [token], titles_sent(calls))
    times = sorted(seconds for _, _, seconds in results)
    print(
        f"\n[drill: database silent] {len(results)} routes: 503 x {len(results)} in {times[0]:.2f}-{times[-1]:.2f} s "
        f"(connect timeout {CONNECT_TIMEOUT} s)"
    )


def get_timed(port, path, token):
    """One GET on a connection of its own: (status, body, Retry-After, seconds)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return (
            response.status,
            json.loads(response.read()),
            response.getheader("Retry-After"),
            time.monotonic() - started,
        )
    finally:
        connection.close()


def test_database_not_answering_under_gunicorn_is_503_within_the_connect_timeout(session_on, tmp_path):
    """Under the gevent worker psycopg2 connects through a wait callback, and libpq's connect_timeout applies only
    to a blocking connect: gunicorn_hooks.wait_for_postgres applies it."""
    token = session_on()
    silent = SilentServer()
    try:
        service = Service(
            f"postgresql://postgres@127.0.0.1:{silent.port}/postgres",
            tmp_path / "gunicorn.log",
            env={"DATABASE_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT)},
            ready_path="/health",
        )
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(lambda _: get_timed(service.port, "/api/tasks", token), range(8)))
            health = get_timed(service.port, "/health", token)
        finally:
            service.stop()
    finally:
        silent.close()
    slowest = max(seconds for *_, seconds in answers)
    print(f"\n[drill: database silent, under gunicorn] 8 lists: 503 x 8, slowest {slowest:.2f} s")
    assert [answer[:3] for answer in answers] == [(503, {"detail": "Service temporarily unavailable"}, "5")] * 8
    assert slowest < CONNECT_TIMEOUT + MARGIN
    assert health[:2] == (200, {"status": "healthy"})
    assert_no_secrets(service.output(), [token], [])


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_first_requests_after_a_restart_while_idle_succeed(cluster, session_on, mode, caplog):
    """The pool still holds connections from before the restart: none of them may cost a request."""
    caplog.set_level(logging.INFO)
    token = session_on()
    app = create_app(base_config(cluster.url))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    task_id = client.post("/api/tasks", headers=headers, json={"title": "before"}).get_json()["data"]["id"]
    # Fill the pool with several connections, as a busy worker has.
    call_all_at_once(app, [("GET", "/api/tasks", None)] * 5, token)
    assert client.get("/health/ready").status_code == 200
    cluster.restart(mode)
    assert client.get("/health/ready").status_code == 200
    assert client.get(f"/api/tasks/{task_id}", headers=headers).status_code == 200
    results = call_all_at_once(app, [("GET", "/api/tasks", None)] * 5, token)
    assert [response.status_code for _, response, _ in results] == [200] * 5
    assert_no_secrets(caplog.text, [token], [])
    get_engine(app).dispose()


# -- Restarts under a write load, through gunicorn ---------------------------


def test_postgres_restarts_under_a_write_load_through_gunicorn(cluster, session_on, sql, tmp_path):
    tokens = [session_on() for _ in range(3)]
    service = Service(cluster.url, tmp_path / "gunicorn.log")
    restarts = {}
    try:
        with WriteLoad(service.port, tokens, threads=6, prefix="restart-") as load:
            for mode in ("fast", "immediate"):
                time.sleep(1.0)
                started = time.monotonic()
                cluster.restart(mode)
                restarts[mode] = time.monotonic() - started
            time.sleep(1.0)
    finally:
        service.stop()
    counts = load.counts()
    stored = load.assert_every_200_stored(sql)
    stored_after_503 = [title for title in load.titles(503) if title in stored]
    print(
        f"\n[drill: Postgres restarted under load] answers {dict(counts)}; "
        f"restart fast {restarts['fast']:.2f} s, immediate {restarts['immediate']:.2f} s; "
        f"503s whose task was stored anyway: {len(stored_after_503)}"
    )
    assert set(counts) - {200, 503} == set()
    last_answers = {index: outcome for index, _, outcome, _ in load.outcomes}
    assert last_answers == {index: 200 for index in range(6)}  # recovered with no restart of the service
    assert_no_secrets(service.output(), tokens, load.titles())


def test_creates_retried_with_idempotency_keys_are_stored_once_across_restarts(cluster, session_on, sql, tmp_path):
    """A 503 does not say whether the create was stored (the commit may have happened just before the connection
    died); a client that retries with the same Idempotency-Key gets each task exactly once."""
    tokens = [session_on() for _ in range(3)]
    service = Service(cluster.url, tmp_path / "gunicorn.log")
    try:
        with WriteLoad(service.port, tokens, threads=6, prefix="retried-", retry_unavailable=True) as load:
            for mode in ("fast", "immediate"):
                time.sleep(1.0)
                cluster.restart(mode)
            time.sleep(1.0)
    finally:
        service.stop()
    counts = load.counts()
    stored = load.assert_every_200_stored(sql)
    retried = set(load.titles(503))
    duplicates = sql("SELECT title, count(*) FROM task WHERE title LIKE 'retried-%' GROUP BY title HAVING count(*) > 1")
    print(
        f"\n[drill: creates retried with Idempotency-Key across restarts] answers {dict(counts)}; "
        f"{len(retried)} creates retried after a 503; {len(stored)} tasks stored; duplicates: {len(duplicates)}"
    )
    assert set(counts) - {200, 503} == set()
    assert duplicates == []
    # Every retried create was answered 200 in the end (the last attempt of each thread may have been cut off by
    # the end of the load: it is the only one allowed to be unanswered).
    answered = set(load.titles(200))
    last_attempts = {index: (title, outcome) for index, title, outcome, _ in load.outcomes}
    assert retried - answered <= {title for title, outcome in last_attempts.values() if outcome == 503}
    assert_no_secrets(service.output(), tokens, load.titles())
