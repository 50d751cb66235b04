"""gunicorn is stopped (SIGTERM) in the middle of a write load, on a Postgres cluster of the drills' own: every
request it was sent is finished and stored, nothing is dropped after it was sent, and no log line holds a session
token or a value a client sent.
The drill prints its figures (run pytest with -s to see them).
"""

import http.client
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from drills.harness import GRACEFUL_TIMEOUT, Service, WriteLoad, assert_no_secrets, stored_titles, unique_title

pytestmark = pytest.mark.postgres


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
