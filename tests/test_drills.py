"""Failure drills on a Postgres cluster of the tests' own (see private_postgres.py).

The database goes away, restarts under a write load (cleanly and by crash),
and gunicorn is stopped in the middle of a load. In every drill: no answer is
a 500, an outage is a 503 with Retry-After (never a 401), every create that
was answered 200 is stored, the service recovers without a restart of its own,
and no log line holds a session token, a part of one, or a value a client sent.
Each drill prints its figures (run pytest with -s to see them).
"""
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text

from conftest import base_config
from private_postgres import PrivateCluster, free_port, missing_requirement
from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.database import get_engine, normalize_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
CONNECT_TIMEOUT = 1
# What an answer may take beyond the connect timeout: the app's own work on a loaded 2-core machine.
MARGIN = 1.5
GRACEFUL_TIMEOUT = 10


@pytest.fixture(scope="module")
def cluster():
    reason = missing_requirement()
    if reason:
        pytest.skip(f"failure drills need a private Postgres cluster: {reason}")
    cluster = PrivateCluster()
    try:
        cluster.start()
        subprocess.run(
            [sys.executable, "-m", "flask", "--app", "todo_api", "init-db", "--auth-tables"],
            cwd=REPO, env={**os.environ, "DATABASE_URL": cluster.url}, check=True, capture_output=True, timeout=60,
        )
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def issued_tokens():
    """Every session token the drills hand out, to look for in the logs."""
    return []


@pytest.fixture
def sql(cluster):
    engine = create_engine(normalize_url(cluster.url), isolation_level="AUTOCOMMIT")

    def run(statement, **params):
        with engine.connect() as connection:
            return connection.execute(text(statement), params).all()

    yield run
    engine.dispose()


@pytest.fixture
def session_on(cluster, issued_tokens):
    """A real user and session in the private cluster; returns the token."""

    def create(email=None):
        app = create_app(base_config(cluster.url))
        with get_engine(app).begin() as connection:
            token = create_user_session(connection, app.config, email or f"{uuid.uuid4().hex}@example.com")
        get_engine(app).dispose()
        issued_tokens.append(token)
        return token

    return create


def unique_title(prefix="drill"):
    return f"{prefix}-{uuid.uuid4().hex}"


def assert_no_secrets(log_text, tokens, titles):
    """No token, no 8-character piece of one, no title a client sent."""
    for token in tokens:
        pieces = {token[i:i + 8] for i in range(len(token) - 7)}
        leaked = sorted(piece for piece in pieces if piece in log_text)
        assert not leaked, f"log holds part of a session token: {leaked[:3]}"
    leaked = [title for title in titles if title in log_text]
    assert not leaked, f"log holds a task title (an SQL parameter): {leaked[:3]}"


def stored_titles(sql, prefix):
    return {title: task_id for task_id, title in sql("SELECT id, title FROM task WHERE title LIKE :p", p=prefix + "%")}


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
    print(f"\n[drill: database stopped] {len(results)} routes: 503 x {len(results)}, slowest {slowest:.3f} s; "
          f"outage and recovery {outage:.1f} s")


class SilentServer:
    """A host that accepts TCP connections and never says a word, like a hung or firewalled database."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self):
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_database_not_answering_is_503_within_the_connect_timeout(cluster, session_on, caplog):
    caplog.set_level(logging.INFO)
    token = session_on()
    silent = SilentServer()
    try:
        app = create_app(base_config(f"postgresql://postgres@127.0.0.1:{silent.port}/postgres",
                                     DATABASE_CONNECT_TIMEOUT=CONNECT_TIMEOUT))
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
    print(f"\n[drill: database silent] {len(results)} routes: 503 x {len(results)} in {times[0]:.2f}-{times[-1]:.2f} s "
          f"(connect timeout {CONNECT_TIMEOUT} s)")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_first_requests_after_a_restart_while_idle_succeed(cluster, session_on, mode):
    """The pool still holds connections from before the restart: none of them may cost a request."""
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
    get_engine(app).dispose()
