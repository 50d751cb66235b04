"""Failure drills on a Postgres cluster of the tests' own (see private_postgres.py).

The database goes away, restarts under a write load (cleanly and by crash),
and gunicorn is stopped in the middle of a load. In every drill: no answer is
a 500, an outage is a 503 with Retry-After (never a 401), every create that
was answered 200 is stored, the service recovers without a restart of its own,
and no log line holds a session token, a part of one, or a value a client sent.
A session lookup that fails on the server (it waits behind a migration's lock
past its statement timeout) leaves no token in Postgres's own log either,
directly and through PgBouncer.
Each drill prints its figures (run pytest with -s to see them).
"""

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
from conftest import SECRET, base_config
from pgbouncer import Pooler
from pgbouncer import missing_requirement as pooler_missing
from private_postgres import PrivateCluster, free_port, missing_requirement
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import InternalServerError

from todo_api import create_app
from todo_api.auth import sign
from todo_api.cli import create_user_session
from todo_api.database import get_engine, normalize_url
from todo_api.token_digest import token_digest

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
            cwd=REPO,
            env={**os.environ, "DATABASE_URL": cluster.url},
            check=True,
            capture_output=True,
            timeout=60,
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
            result = connection.execute(text(statement), params)
            return result.all() if result.returns_rows else None

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
        pieces = {token[i : i + 8] for i in range(len(token) - 7)}
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
    print(
        f"\n[drill: database stopped] {len(results)} routes: 503 x {len(results)}, slowest {slowest:.3f} s; "
        f"outage and recovery {outage:.1f} s"
    )


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


@pytest.mark.parametrize("backend", ["postgres", "sqlite"], indirect=True)
def test_sqlalchemy_errors_do_not_list_the_parameters_sent(app, token):
    """Defence in depth: errors.py logs only an error's type, never its text.

    The text could not be made clean anyway: psycopg2 puts the values into the
    statement before sending it, so Postgres's own message may quote them.
    """
    with pytest.raises(DBAPIError) as raised:
        with get_engine(app).connect() as connection:
            connection.execute(text("SELECT id FROM no_such_table WHERE token = :token"), {"token": token})
    message = str(raised.value)
    assert "[SQL parameters hidden due to hide_parameters=True]" in message
    assert "[parameters:" not in message


def test_an_unexpected_database_error_is_a_500_whose_log_holds_no_value_sent(cluster, session_on, sql, caplog):
    caplog.set_level(logging.INFO)
    token = session_on()
    sql(
        "CREATE OR REPLACE FUNCTION drill_refuse() RETURNS trigger AS "
        "$$ BEGIN RAISE EXCEPTION 'refused: %', NEW.title; END $$ LANGUAGE plpgsql; "
        "CREATE OR REPLACE TRIGGER drill_refuse BEFORE INSERT ON task FOR EACH ROW EXECUTE FUNCTION drill_refuse()"
    )
    title = unique_title("refused")
    try:
        app = create_app(base_config(cluster.url))
        response = app.test_client().post(
            "/api/tasks", headers={"Authorization": f"Bearer {token}"}, json={"title": title}
        )
        get_engine(app).dispose()
    finally:
        sql("DROP TRIGGER drill_refuse ON task; DROP FUNCTION drill_refuse()")
    assert (response.status_code, response.get_json()) == (500, {"detail": InternalServerError.description})
    assert "unhandled error: InternalError" in caplog.text
    assert_no_secrets(caplog.text, [token], [title])


# -- Drill: the session lookup fails on the server ----------------------------


class ServerLog:
    """What the private cluster's server log gains from now on."""

    def __init__(self, path):
        self.path = path
        self.start = os.path.getsize(path)

    def new_text(self):
        with open(self.path, errors="replace") as log:
            log.seek(self.start)
            return log.read()

    @staticmethod
    def entries(text):
        """The log's entries, each with its continuation lines (a statement spans several)."""
        return re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text.strip())


def lookups_behind_a_migrations_lock(cluster, app, credentials):
    """Hold an ACCESS EXCLUSIVE lock on the session table, as a migration altering it would, while each
    credential makes a request (the session lookup waits for the lock until its statement timeout); then
    release it. Returns the responses."""
    locker = psycopg2.connect(cluster.url)
    try:
        with locker.cursor() as cursor:
            cursor.execute('LOCK TABLE "session" IN ACCESS EXCLUSIVE MODE')
        client = app.test_client()
        return [
            client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {credential}"})
            for credential in credentials
            for method, path, body in [("GET", "/api/tasks", None), ("POST", "/api/tasks", {"title": "waits"})]
        ]
    finally:
        locker.rollback()
        locker.close()


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_a_session_lookup_cancelled_on_the_server_leaves_no_token_in_its_log(
    cluster, session_on, sql, issued_tokens, through, caplog
):
    """psycopg2 puts parameters into the statement text, and Postgres logs a failed statement whole
    (`log_min_error_statement = error`, the default): the lookup's text must hold only the token's digest."""
    caplog.set_level(logging.INFO)
    if through == "pgbouncer":
        reason = pooler_missing()
        if reason:
            pytest.skip(reason)
    token = session_on()
    signed = f"{token}.{sign(token, SECRET)}"
    digest = token_digest(token).hex()
    pooler = Pooler(cluster.url).start() if through == "pgbouncer" else None
    server_log = ServerLog(cluster.log)
    app = create_app(
        base_config(
            pooler.url(cluster.url) if pooler else cluster.url,
            BETTER_AUTH_SECRET=SECRET,
            DATABASE_STATEMENT_TIMEOUT_MS=200,
        )
    )
    try:
        started = time.monotonic()
        responses = lookups_behind_a_migrations_lock(cluster, app, [token, signed])
        waited = time.monotonic() - started
        assert [(r.status_code, r.get_json(), r.headers.get("Retry-After")) for r in responses] == [
            (503, {"detail": "Service temporarily unavailable"}, "5")
        ] * 4
        # The lock is gone: the same credentials are served again, by the same app.
        for credential in (token, signed):
            response = app.test_client().get("/api/tasks", headers={"Authorization": f"Bearer {credential}"})
            assert response.status_code == 200
        pooler_log = pooler.log_text() if pooler else ""
    finally:
        get_engine(app).dispose()
        if pooler:
            pooler.stop()
    assert sql("SELECT count(*) FROM task WHERE title = 'waits'") == [(0,)]

    logged = server_log.new_text()
    cancelled = logged.count("ERROR:  canceling statement due to statement timeout")
    statements = [entry for entry in server_log.entries(logged) if "STATEMENT:" in entry]
    assert cancelled == 4, logged[-3000:]
    assert len(statements) == 4, logged[-3000:]
    for entry in statements:
        assert "WHERE todo_api_token_digest(session.token) = " in entry, entry
        assert f"'\\x{digest}'::bytea" in entry, entry
    assert logged.count(digest) == logged.count(f"'\\x{digest}'::bytea") == 4
    for text_seen in (logged, pooler_log, caplog.text):
        assert signed not in text_seen
        assert_no_secrets(text_seen, [token, signed.partition(".")[2]], [])
    with open(cluster.log, errors="replace") as log:  # nor any token of any drill, anywhere in the server log
        assert_no_secrets(log.read(), issued_tokens, [])
    print(
        f"\n[drill: session lookup cancelled, {through}] 4 requests behind an ACCESS EXCLUSIVE lock: 503 x 4 in "
        f"{waited:.2f} s; server log: {cancelled} statement timeouts, digest only as a bytea literal, no token"
    )


# -- Drills under gunicorn ---------------------------------------------------


class Service:
    """The service under gunicorn, started as the Procfile starts it, output captured."""

    def __init__(self, database_url, log_path, env=None):
        self.port = free_port()
        self.log_path = log_path
        env = {
            **os.environ,
            "PORT": str(self.port),
            "DATABASE_URL": database_url,
            "WEB_CONCURRENCY": "2",
            "GUNICORN_THREADS": "4",
            "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT),
            "GUNICORN_ACCESS_LOG": "true",
            "LOG_LEVEL": "INFO",
            "SECRET_KEY": "drill-secret-0123456789abcdef",  # production refuses to start without one
            # All the load comes from one address and one user: counted, never refused.
            "RATELIMIT_PER_IP": "1000000 per minute",
            "RATELIMIT_PER_USER": "1000000 per minute",
            "RATELIMIT_CONCURRENT_PER_USER": "0",
            **(env or {}),
        }
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [GUNICORN, "--config", "gunicorn.conf.py", "wsgi:app"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_until_ready()

    def _wait_until_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"gunicorn exited:\n{self.output()}"
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/health/ready")
                if connection.getresponse().status == 200:
                    connection.close()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn not ready within {timeout} s:\n{self.output()}")

    def output(self):
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class WriteLoad:
    """Client threads creating tasks with unique titles, each on its own kept-alive connection.

    Every attempt is recorded as (thread, title, outcome, task id): the HTTP
    status, "refused" when no connection could be opened (nothing was sent),
    or "dropped" when the connection failed after the request went out.
    """

    def __init__(self, port, tokens, threads, prefix, retry_unavailable=False):
        self.port, self.tokens, self.prefix = port, tokens, prefix
        # Retrying: every create carries an Idempotency-Key, and one answered 503 is sent again, same key and
        # body, until it is answered, as a client that trusts Idempotency-Key would.
        self.retry_unavailable = retry_unavailable
        self.outcomes = []
        self.finished = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(index,)) for index in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc):
        self.finished.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self, index):
        headers = {
            "Authorization": f"Bearer {self.tokens[index % len(self.tokens)]}",
            "Content-Type": "application/json",
        }
        connection = None
        title = None
        while not self.finished.is_set():
            if title is None or not self.retry_unavailable:
                title = unique_title(self.prefix)
            if self.retry_unavailable:
                headers["Idempotency-Key"] = title
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                try:
                    connection.connect()
                except ConnectionRefusedError:
                    self.outcomes.append((index, title, "refused", None))
                    connection = None
                    time.sleep(0.05)
                    continue
            try:
                connection.request("POST", "/api/tasks", body=json.dumps({"title": title}), headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self.outcomes.append((index, title, "dropped", None))
                connection.close()
                connection = None
                continue
            task_id = json.loads(body)["data"]["id"] if response.status == 200 else None
            self.outcomes.append((index, title, response.status, task_id))
            if response.status != 503:
                title = None
            if response.will_close:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def counts(self):
        return Counter(outcome for _, _, outcome, _ in self.outcomes)

    def titles(self, outcome=None):
        return [title for _, title, seen, _ in self.outcomes if outcome is None or seen == outcome]

    def assert_every_200_stored(self, sql):
        stored = stored_titles(sql, self.prefix)
        answered = {title: task_id for _, title, outcome, task_id in self.outcomes if outcome == 200}
        assert answered, "no create succeeded"
        assert {title: stored.get(title) for title in answered} == answered
        return stored


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


SLOW_INSERT_TRIGGER = """
CREATE OR REPLACE FUNCTION drill_slow_insert() RETURNS trigger AS $$
BEGIN
    IF NEW.title LIKE 'slow-%' THEN PERFORM pg_sleep(1.5); END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER drill_slow_insert BEFORE INSERT ON task
    FOR EACH ROW EXECUTE FUNCTION drill_slow_insert();
"""


def post_task(port, token, title):
    """One create on a connection of its own: (status, task id)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            "/api/tasks",
            body=json.dumps({"title": title}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        body = json.loads(response.read())
        return response.status, body["data"]["id"] if response.status == 200 else None
    finally:
        connection.close()


def wait_for_sleeping_inserts(sql, count, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")[0][0] == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} slow inserts never got under way")


def test_sigterm_during_a_load_finishes_what_was_sent(cluster, session_on, sql, tmp_path):
    tokens = [session_on() for _ in range(3)]
    sql(SLOW_INSERT_TRIGGER)
    service = Service(cluster.url, tmp_path / "gunicorn.log")
    slow_titles = [unique_title("slow") for _ in range(2)]
    try:
        with (
            WriteLoad(service.port, tokens, threads=4, prefix="sigterm-") as load,
            ThreadPoolExecutor(max_workers=2) as pool,
        ):
            time.sleep(0.5)
            slow = [pool.submit(post_task, service.port, tokens[0], title) for title in slow_titles]
            wait_for_sleeping_inserts(sql, 2)
            started = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            exit_code = service.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
            shutdown = time.monotonic() - started
            slow_answers = [future.result() for future in slow]
            time.sleep(0.2)  # the load meets the closed port
    finally:
        service.stop()
        sql("DROP TRIGGER drill_slow_insert ON task; DROP FUNCTION drill_slow_insert()")
    counts = load.counts()
    print(
        f"\n[drill: SIGTERM under load] answers {dict(counts)}; in-flight slow creates {slow_answers}; "
        f"master exited with {exit_code} after {shutdown:.2f} s (graceful timeout {GRACEFUL_TIMEOUT} s)"
    )
    assert exit_code == 0
    assert shutdown < GRACEFUL_TIMEOUT
    stored = stored_titles(sql, "slow-")
    assert slow_answers == [(200, stored[title]) for title in slow_titles]
    load.assert_every_200_stored(sql)
    assert set(counts) - {200, "refused"} == set()  # nothing dropped after it was sent, no 5xx
    assert_no_secrets(service.output(), tokens, load.titles() + slow_titles)
