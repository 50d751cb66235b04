"""What the drills run: the service under gunicorn as the Procfile starts it, client loads on it, a database
host that never answers, the private cluster's server log, and the check that no log holds a secret.

The drills' fixtures (a private Postgres cluster per module, SQL and real sessions on it) are in conftest.py.
"""

import http.client
import json
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

from support import REPO, free_port

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
GRACEFUL_TIMEOUT = 10


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


class Service:
    """The service under gunicorn, started as the Procfile starts it, output captured; `env` over the defaults
    below (a drill's own deadlines, workers or limits)."""

    def __init__(self, database_url, log_path, env=None):
        self.port = free_port()
        self.log_path = log_path
        env = {
            **os.environ,
            "PORT": str(self.port),
            "DATABASE_URL": database_url,
            "WEB_CONCURRENCY": "2",
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


class ClientThreads:
    """Threads that each run `self._run(index)` from entering the `with` block until `self.finished` is set on
    leaving it; leaving waits up to `join_timeout` seconds for each to end."""

    join_timeout = 60

    def __init__(self, threads):
        self.finished = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(index,)) for index in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc):
        self.finished.set()
        for thread in self.threads:
            thread.join(timeout=self.join_timeout)

    def _run(self, index):
        raise NotImplementedError


class WriteLoad(ClientThreads):
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
        super().__init__(threads)

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
