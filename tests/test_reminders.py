"""Reminders delivered by Web Push, end to end, to a push service of the tests' own (see support/push_service.py).

The worker's clock is passed in (`now`), so that a test decides when a reminder is due and when a retry's
time has come; the push service checks each request's VAPID token against the real clock.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.dialects import postgresql

from support import base_config, free_port, user_id_of
from support.private_postgres import running_cluster
from support.push_service import PushService, b64url_decode, refuse_lookups_beyond_loopback
from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.db.connections import get_engine
from todo_api.db.engine import normalize_url
from todo_api.db.migrate import create_schema
from todo_api.db.tables import push_delivery, push_subscription, task
from todo_api.reminders.push import Outcome, classify, generate_vapid_keys, retry_after_seconds, signer_from_config
from todo_api.reminders.worker import (
    _TASKS_DUE,
    LEASE,
    MAX_ATTEMPTS,
    Settings,
    Worker,
    backoff_seconds,
    reminder_body,
    reminder_time,
    run_forever,
)
from todo_api.timezones import utcnow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY = generate_vapid_keys()
VAPID = {
    "VAPID_PUBLIC_KEY": VAPID_PUBLIC_KEY,
    "VAPID_PRIVATE_KEY": VAPID_PRIVATE_KEY,
    "VAPID_SUBJECT": "mailto:reminders@example.com",
}
PUSH_CONFIG = {**VAPID, "PUSH_ALLOW_INSECURE_ENDPOINTS": True, "REMINDER_PUSH_THREADS": 4, "PUSH_TIMEOUT_SECONDS": 2}
# The worker's clock in most tests: 2030-03-10 (a Sunday) 16:05 UTC.
NOW = datetime(2030, 3, 10, 16, 5)


# 40,000 tasks of 40 users, due in the coming hours and days, none reminded yet.
FILL = text("""
    INSERT INTO task (user_id, title, description, completed, priority, category, tags,
                      created_at, updated_at, due_date, reminder_sent)
    SELECT CASE WHEN g % 4 = 0 THEN 'user-7' ELSE 'user-' || (g % 40) END,
           'title ' || g, 'description ' || g, g % 3 = 0,
           (ARRAY['low', 'medium', 'high'])[g % 3 + 1]::taskpriority, 'c' || (g % 7), '["t"]',
           now() - g * interval '1 minute', now() - g * interval '1 second',
           CASE WHEN g % 5 = 0 THEN NULL ELSE now() + g * interval '1 hour' END, false
    FROM generate_series(1, 40000) AS g
""")


def at(**delta):
    return NOW + timedelta(**delta)


def iso(moment):
    return moment.replace(tzinfo=UTC).isoformat()


@pytest.fixture(autouse=True)
def no_lookups_beyond_loopback(monkeypatch):
    refuse_lookups_beyond_loopback(monkeypatch)


@pytest.fixture
def app(make_app):
    return make_app(**PUSH_CONFIG)


@pytest.fixture
def push_service(caplog):
    """The push service; and, whatever the test did, the logs name no endpoint, key or token."""
    caplog.set_level(logging.INFO)
    service = PushService(VAPID_PUBLIC_KEY).start()
    yield service
    service.stop()
    for name in service.keys:
        assert f"/push/{name}" not in caplog.text
    assert service.origin not in caplog.text
    assert VAPID_PRIVATE_KEY not in caplog.text


@pytest.fixture
def subscribe(client, push_service):
    """`subscribe(headers, name)`: a browser subscribes at the push service, and sends it to the API."""

    def run(headers, name):
        response = client.post("/api/notifications/subscribe", headers=headers, json=push_service.subscription(name))
        assert response.status_code == 200, response.get_json()
        return response.get_json()["data"]

    return run


def send_due(app, now=NOW):
    worker = Worker.from_app(app)
    try:
        return worker.run_pass(now=now)
    finally:
        worker.close()


def rows(app, table):
    with get_engine(app).connect() as connection:
        return connection.execute(select(table)).all()


def create(client, headers, **fields):
    response = client.post("/api/tasks", headers=headers, json={"title": "t", **fields})
    assert response.status_code == 200
    return response.get_json()["data"]["id"]


def reminder_sent(client, auth, task_id):
    return client.get(f"/api/tasks/{task_id}", headers=auth).get_json()["data"]["reminder_sent"]


# -- The rules, unit by unit ----------------------------------------------------------------


def test_a_reminder_is_due_at_remind_at_else_the_lead_before_the_due_date():
    lead = timedelta(minutes=60)
    assert reminder_time(at(hours=1), at(hours=5), lead) == at(hours=1)
    assert reminder_time(None, at(hours=5), lead) == at(hours=4)
    assert reminder_time(None, None, lead) is None


@pytest.mark.parametrize(
    ("due", "zone", "body"),
    [
        (datetime(2030, 3, 10, 17, 0), "UTC", "Due 17:00"),
        (datetime(2030, 3, 10, 16, 0), "Europe/Berlin", "Due 17:00"),
        (datetime(2030, 3, 10, 23, 30), "Europe/Berlin", "Due tomorrow 00:30"),
        (datetime(2030, 3, 11, 9, 30), "UTC", "Due tomorrow 09:30"),
        (datetime(2030, 3, 12, 17, 0), "UTC", "Due Tue 12 Mar 17:00"),
        (datetime(2030, 3, 9, 8, 15), "UTC", "Due Sat 9 Mar 08:15"),
        (datetime(2031, 1, 2, 17, 0), "America/New_York", "Due Thu 2 Jan 2031 12:00"),
        (None, "UTC", "Reminder"),
    ],
)
def test_the_body_is_the_due_time_in_the_users_zone(due, zone, body):
    assert reminder_body(due, ZoneInfo(zone), NOW) == body


def test_push_service_answers_are_classified():
    assert classify(201, {}) == Outcome("delivered", "201")
    assert classify(410, {}) == Outcome("gone", "410")
    assert classify(404, {}) == Outcome("gone", "404")
    assert classify(429, {"Retry-After": "120"}) == Outcome("retry", "429", 120.0)
    assert classify(503, {}) == Outcome("retry", "503", None)
    assert classify(400, {}) == Outcome("rejected", "400")
    assert classify(403, {}) == Outcome("rejected", "403")
    assert classify(301, {}) == Outcome("rejected", "301")


def test_retry_after_is_seconds_or_an_http_date():
    now = datetime(2030, 3, 10, 16, 5, tzinfo=UTC)
    assert retry_after_seconds("30", now) == 30.0
    assert retry_after_seconds("Sun, 10 Mar 2030 16:07:00 GMT", now) == 120.0
    assert retry_after_seconds("Sun, 10 Mar 2030 16:00:00 GMT", now) == 0.0
    assert retry_after_seconds("999999999", now) == 86400.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_backoff_doubles_from_30_seconds_to_an_hour_and_honours_retry_after():
    assert [backoff_seconds(attempts, None) for attempts in (1, 2, 3, 4, 8, 11)] == [30, 60, 120, 240, 3600, 3600]
    assert backoff_seconds(1, 500.0) == 500.0
    assert backoff_seconds(3, 0.0) == 1.0


# -- Delivery, end to end --------------------------------------------------------------------


def test_a_due_reminder_is_pushed_once_with_the_exact_payload(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice-laptop")
    created = client.post("/api/tasks", headers=auth, json={"title": "Buy milk", "due_date": iso(at(minutes=55))})
    task_id = created.get_json()["data"]["id"]
    assert send_due(app) == Counter(delivered=1)
    assert push_service.payloads() == [
        {"title": "Buy milk", "body": "Due 17:00", "task_id": task_id, "url": "/dashboard"}
    ]
    assert push_service.failures == []
    assert reminder_sent(client, auth, task_id) is True
    assert rows(app, push_delivery) == []
    assert send_due(app, at(hours=1)) == Counter()
    assert len(push_service.payloads()) == 1


def test_the_request_is_web_push_as_rfc_8030_to_8292_say(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice-laptop")
    task_id = client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)}).get_json()["data"][
        "id"
    ]
    send_due(app)
    [message] = push_service.messages
    assert message.headers["Content-Encoding"] == "aes128gcm"
    assert message.headers["TTL"] == "86400"
    assert message.headers["Urgency"] == "high"
    assert message.headers["Topic"] == f"task-{task_id}"
    assert message.headers["Authorization"].startswith("vapid t=")  # checked in full by the push service


def test_the_body_shows_the_due_time_in_the_users_time_zone(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice-laptop")
    client.put("/api/settings", headers=auth, json={"time_zone": "Europe/Berlin"})
    client.post("/api/tasks", headers=auth, json={"title": "Call mum", "due_date": "2030-03-10T16:30:00Z"})
    send_due(app)
    assert [payload["body"] for payload in push_service.payloads()] == ["Due 17:30"]


def test_remind_at_decides_when_it_is_set(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice-laptop")
    fields = {"title": "Report", "due_date": "2030-03-12T17:00:00Z", "remind_at": iso(at(minutes=10))}
    task_id = client.post("/api/tasks", headers=auth, json=fields).get_json()["data"]["id"]
    client.post("/api/tasks", headers=auth, json={"title": "No date", "remind_at": iso(at(minutes=10))})
    client.post("/api/tasks", headers=auth, json={"title": "Never"})
    assert send_due(app, at(minutes=9, seconds=59)) == Counter()
    assert send_due(app, at(minutes=10)) == Counter(delivered=2)
    assert sorted(push_service.payloads(), key=lambda payload: payload["title"]) == [
        {"title": "No date", "body": "Reminder", "task_id": task_id + 1, "url": "/dashboard"},
        {"title": "Report", "body": "Due Tue 12 Mar 17:00", "task_id": task_id, "url": "/dashboard"},
    ]


def test_the_lead_before_the_due_date_is_configurable(make_app, new_session, push_service):
    app = make_app(**PUSH_CONFIG, REMINDER_LEAD_MINUTES=15)
    client, headers = app.test_client(), {"Authorization": f"Bearer {new_session('lead@example.com')}"}
    client.post("/api/notifications/subscribe", headers=headers, json=push_service.subscription("lead"))
    client.post("/api/tasks", headers=headers, json={"title": "Standup", "due_date": "2030-03-10T17:00:00Z"})
    assert send_due(app, datetime(2030, 3, 10, 16, 44, 59)) == Counter()
    assert send_due(app, datetime(2030, 3, 10, 16, 45)) == Counter(delivered=1)


def test_each_subscription_of_the_user_gets_it_once_and_other_users_none(
    client, auth, other_auth, app, subscribe, push_service
):
    subscribe(auth, "alice-laptop")
    subscribe(auth, "alice-phone")
    subscribe(other_auth, "mallory")
    client.post("/api/tasks", headers=auth, json={"title": "Alice's", "remind_at": iso(NOW)})
    assert send_due(app) == Counter(delivered=2)
    assert Counter(message.name for message in push_service.messages) == {"alice-laptop": 1, "alice-phone": 1}


def test_a_user_without_subscriptions_keeps_reminder_sent_false(client, auth, other_auth, app, subscribe, push_service):
    subscribe(other_auth, "mallory")
    task_id = client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)}).get_json()["data"][
        "id"
    ]
    assert send_due(app) == Counter()
    assert reminder_sent(client, auth, task_id) is False  # left to the frontend's own reminder
    subscribe(auth, "alice-laptop")
    assert send_due(app) == Counter(delivered=1)
    assert [message.name for message in push_service.messages] == ["alice-laptop"]


# -- Not pushed: completed, deleted, moved ---------------------------------------------------


def test_a_completed_or_deleted_task_is_not_pushed(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice-laptop")
    done = client.post("/api/tasks", headers=auth, json={"title": "done", "remind_at": iso(NOW)}).get_json()["data"]
    gone = client.post("/api/tasks", headers=auth, json={"title": "gone", "remind_at": iso(NOW)}).get_json()["data"]
    client.patch(f"/api/tasks/{done['id']}/complete", headers=auth)
    client.delete(f"/api/tasks/{gone['id']}", headers=auth)
    assert send_due(app, at(days=1)) == Counter()
    assert push_service.requests == 0


def test_a_moved_task_is_pushed_for_its_new_time_only(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice-laptop")
    by_remind_at = client.post("/api/tasks", headers=auth, json={"title": "a", "remind_at": iso(NOW)}).get_json()
    by_due_date = client.post("/api/tasks", headers=auth, json={"title": "b", "due_date": iso(at(minutes=30))})
    client.put(f"/api/tasks/{by_remind_at['data']['id']}", headers=auth, json={"remind_at": iso(at(hours=2))})
    client.put(f"/api/tasks/{by_due_date.get_json()['data']['id']}", headers=auth, json={"due_date": iso(at(hours=3))})
    assert send_due(app) == Counter()
    assert send_due(app, at(hours=2)) == Counter(delivered=2)
    assert sorted(payload["title"] for payload in push_service.payloads()) == ["a", "b"]


def test_moving_the_due_date_of_a_pushed_reminder_makes_it_due_again(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice-laptop")
    task_id = client.post("/api/tasks", headers=auth, json={"title": "b", "due_date": iso(NOW)}).get_json()["data"][
        "id"
    ]
    assert send_due(app) == Counter(delivered=1)
    moved = client.put(f"/api/tasks/{task_id}", headers=auth, json={"due_date": "2030-03-11T09:00:00Z"})
    assert moved.get_json()["data"]["reminder_sent"] is False
    same = client.put(f"/api/tasks/{task_id}", headers=auth, json={"title": "b2", "due_date": "2030-03-11T09:00:00Z"})
    assert same.get_json()["data"]["reminder_sent"] is False
    assert send_due(app, datetime(2030, 3, 11, 8, 0)) == Counter(delivered=1)
    assert [payload["body"] for payload in push_service.payloads()] == ["Due 16:05", "Due 09:00"]


def test_a_reminder_waiting_for_a_retry_is_dropped_when_its_task_is_completed_or_moved(
    client, auth, app, subscribe, push_service
):
    subscribe(auth, "alice-laptop")
    push_service.answer("alice-laptop", (503, {}), (503, {}))
    done = client.post("/api/tasks", headers=auth, json={"title": "done", "remind_at": iso(NOW)}).get_json()["data"]
    moved = client.post("/api/tasks", headers=auth, json={"title": "moved", "remind_at": iso(NOW)}).get_json()["data"]
    assert send_due(app) == Counter(retry=2)
    client.patch(f"/api/tasks/{done['id']}/complete", headers=auth, json={"completed": True})
    client.put(f"/api/tasks/{moved['id']}", headers=auth, json={"remind_at": iso(at(hours=5))})
    assert send_due(app, at(hours=1)) == Counter(dropped=2)
    assert push_service.payloads() == []
    assert send_due(app, at(hours=5)) == Counter(delivered=1)
    assert [payload["title"] for payload in push_service.payloads()] == ["moved"]
    assert rows(app, push_delivery) == []


def test_a_reminder_waiting_for_a_retry_never_goes_to_the_next_user_of_the_endpoint(
    client, auth, other_auth, app, push_service
):
    browser = push_service.subscription("shared-browser")
    client.post("/api/notifications/subscribe", headers=auth, json=browser)
    push_service.answer("shared-browser", (503, {}))
    client.post("/api/tasks", headers=auth, json={"title": "Alice's secret", "remind_at": iso(NOW)})
    assert send_due(app) == Counter(retry=1)
    client.post("/api/notifications/subscribe", headers=other_auth, json=browser)  # another user signs in there
    assert send_due(app, at(hours=1)) == Counter(dropped=1)
    assert push_service.payloads() == []


# -- Push services that fail -----------------------------------------------------------------


@pytest.mark.parametrize("status", [410, 404])
def test_a_gone_subscription_is_deleted_and_the_others_still_get_it(client, auth, app, subscribe, push_service, status):
    subscribe(auth, "alice-old")
    subscribe(auth, "alice-new")
    push_service.answer("alice-old", (status, {}))
    client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)})
    assert send_due(app) == Counter(delivered=1, gone=1)
    assert [row.endpoint.rsplit("/", 1)[-1] for row in rows(app, push_subscription)] == ["alice-new"]
    assert rows(app, push_delivery) == []
    client.post("/api/tasks", headers=auth, json={"title": "next", "remind_at": iso(NOW)})
    assert send_due(app) == Counter(delivered=1)
    assert [message.name for message in push_service.messages] == ["alice-new", "alice-new"]


@pytest.mark.parametrize(
    ("answer", "wait"),
    [((503, {"Retry-After": "120"}), 120), ((429, {"Retry-After": "600"}), 600), ((503, {}), 30), ((429, {}), 30)],
)
def test_429_and_5xx_are_retried_in_a_later_pass_then_delivered_once(
    client, auth, other_auth, app, subscribe, push_service, answer, wait
):
    subscribe(auth, "alice")
    subscribe(other_auth, "mallory")
    push_service.answer("alice", answer)
    client.post("/api/tasks", headers=auth, json={"title": "Alice's", "remind_at": iso(NOW)})
    client.post("/api/tasks", headers=other_auth, json={"title": "Mallory's", "remind_at": iso(NOW)})
    assert send_due(app) == Counter(delivered=1, retry=1)  # Mallory's is not held up by Alice's push service
    [waiting] = rows(app, push_delivery)
    assert (waiting.attempts, waiting.next_attempt_at, waiting.claim_token) == (1, at(seconds=wait), None)
    assert send_due(app, at(seconds=wait - 1)) == Counter()
    assert send_due(app, at(seconds=wait)) == Counter(delivered=1)
    assert Counter(message.name for message in push_service.messages) == {"alice": 1, "mallory": 1}
    assert send_due(app, at(days=1)) == Counter()
    assert rows(app, push_delivery) == []


def test_a_push_service_that_is_down_is_retried_when_it_is_back(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice")
    task_id = client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)}).get_json()["data"][
        "id"
    ]
    push_service.stop()  # connections refused from now on
    assert send_due(app) == Counter(retry=1)
    assert send_due(app, at(seconds=30)) == Counter(retry=1)
    push_service.start()  # on the same port
    assert send_due(app, at(seconds=89)) == Counter()  # the second wait is 60 s
    assert send_due(app, at(seconds=90)) == Counter(delivered=1)
    assert [payload["task_id"] for payload in push_service.payloads()] == [task_id]


def test_a_push_service_that_does_not_answer_in_time_is_retried(client, auth, app, subscribe, push_service, caplog):
    subscribe(auth, "alice")
    task_id = client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)}).get_json()["data"][
        "id"
    ]
    app.config["PUSH_TIMEOUT_SECONDS"] = 0.5
    push_service.delay = 1.5
    assert send_due(app) == Counter(retry=1)
    assert f"push outcomes other than delivered: TimeoutError x1; tasks {task_id}" in caplog.text
    push_service.delay = 0
    deadline = time.monotonic() + 10
    while not push_service.messages and time.monotonic() < deadline:  # the slow answer's request is taken late
        time.sleep(0.05)
    assert send_due(app, at(minutes=1)) == Counter(delivered=1)
    # The push service took the first message too, too late to say so, and the worker cannot know: a push that
    # timed out is pushed again. (Web Push's Topic header, which the worker sets per task, lets a real push
    # service replace a message that the browser has not fetched yet.)
    assert [payload["task_id"] for payload in push_service.payloads()] == [task_id, task_id]


def test_a_push_rejected_for_good_is_dropped_and_the_subscription_kept(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice")
    push_service.answer("alice", (403, {}))
    client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)})
    assert send_due(app) == Counter(rejected=1)
    assert send_due(app, at(days=1)) == Counter()
    assert (len(rows(app, push_delivery)), len(rows(app, push_subscription))) == (0, 1)


def test_a_reminder_is_given_up_after_the_last_attempt(client, auth, app, subscribe, push_service, caplog):
    subscribe(auth, "alice")
    push_service.answer("alice", *[(503, {"Retry-After": "60"})] * MAX_ATTEMPTS)
    task_id = client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)}).get_json()["data"][
        "id"
    ]
    for attempt in range(MAX_ATTEMPTS - 1):
        assert send_due(app, at(minutes=attempt)) == Counter(retry=1)
    assert send_due(app, at(minutes=MAX_ATTEMPTS - 1)) == Counter(given_up=1)
    assert f"reminder of task {task_id} not pushed to a subscription: 503" in caplog.text
    assert rows(app, push_delivery) == []
    assert push_service.requests == MAX_ATTEMPTS


def test_a_claim_whose_worker_died_is_pushed_once_its_lease_ends(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice")
    client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(NOW)})
    dead = Worker.from_app(app)
    with get_engine(app).connect() as db:
        claimed = dead.claim(db, "0" * 32, NOW).deliveries  # claimed, then the worker is gone before pushing
    dead.close()
    assert len(claimed) == 1
    assert send_due(app, at(seconds=LEASE.total_seconds() - 1)) == Counter()
    assert send_due(app, at(seconds=LEASE.total_seconds())) == Counter(delivered=1)
    assert len(push_service.payloads()) == 1


@pytest.mark.backends("postgres")
def test_finding_due_reminders_reads_only_the_unsent_tasks_through_their_indexes(make_app):
    """40,000 tasks, half of them reminded already: the claim's scan is the two partial indexes, not the table."""
    app = make_app(**PUSH_CONFIG, DATABASE_STATEMENT_TIMEOUT_MS=60000)  # the fill takes seconds on a busy machine
    with get_engine(app).connect() as connection:
        connection.execute(FILL)
        connection.execute(text("UPDATE task SET reminder_sent = true WHERE id % 2 = 0"))
        connection.execute(text("ANALYZE task"))
        cursor = connection.connection.dbapi_connection.cursor()
        statement = _TASKS_DUE.params(
            now=utcnow(), due_by=utcnow() + timedelta(hours=1), batch=100, exhausted=["user-3", "user-9"]
        )
        compiled = statement.compile(dialect=postgresql.dialect()).construct_expanded_state()
        cursor.execute("EXPLAIN " + compiled.statement, compiled.parameters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Bitmap Index Scan on ix_task_reminder_at" in plan, plan
    assert "Bitmap Index Scan on ix_task_reminder_due_date" in plan, plan
    assert "Seq Scan on task" not in plan, plan


# -- One push's trouble is its own ---------------------------------------------------------------


def store_subscription(app, user_id, subscription):
    """A subscription written straight into the table, as one stored before today's rules was."""
    now = utcnow()
    with get_engine(app).begin() as connection:
        connection.execute(
            insert(push_subscription).values(user_id=user_id, created_at=now, updated_at=now, **subscription)
        )


# Endpoints the subscribe route refuses, as stored before it did. Those on 127.0.0.1 in another notation point
# at the tests' push service: had the worker connected, the service would have counted a request.
POISONS = {
    "a host label over 63 characters": lambda service: "https://" + "a" * 64 + ".example.com/x",
    "a name over 253 characters": lambda service: "https://" + ("a" * 62 + ".") * 4 + "com/x",
    "127.1": lambda service: f"http://127.1:{service.port}/push/mallory",
    "0x7f.1": lambda service: f"http://0x7f.1:{service.port}/push/mallory",
    "0177.0.0.1": lambda service: f"http://0177.0.0.1:{service.port}/push/mallory",
    "127.0.1": lambda service: f"http://127.0.1:{service.port}/push/mallory",
    "2130706433": lambda service: f"http://2130706433:{service.port}/push/mallory",
    "%-encoded": lambda service: f"http://%31%32%37.0.0.1:{service.port}/push/mallory",
    "IPv4-mapped IPv6": lambda service: f"http://[::ffff:127.0.0.1]:{service.port}/push/mallory",
    "a local name": lambda service: f"http://push.localhost:{service.port}/push/mallory",
}


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
def test_a_poisoned_subscription_is_its_own_outcome_and_the_victim_is_pushed_once(
    client, app, new_session, push_service, poison
):
    mallory, victim = (new_session(f"{name}@example.com") for name in ("mallory", "victim"))
    mallory_auth, victim_auth = ({"Authorization": f"Bearer {token}"} for token in (mallory, victim))
    client.post("/api/notifications/subscribe", headers=victim_auth, json=push_service.subscription("victim"))
    keys = push_service.subscription("mallory")
    store_subscription(app, user_id_of(app, mallory), {**keys, "endpoint": poison(push_service)})
    create(client, mallory_auth, title="Mallory's", remind_at=iso(NOW))
    create(client, victim_auth, title="Victim's", remind_at=iso(NOW))
    assert send_due(app) == Counter(delivered=1, rejected=1)
    assert (push_service.requests, push_service.connections_opened) == (1, 1)
    assert [(message.name, message.payload["title"]) for message in push_service.messages] == [("victim", "Victim's")]
    assert rows(app, push_delivery) == []
    assert send_due(app, at(hours=1)) == Counter()
    assert push_service.requests == 1


def test_keys_a_message_cannot_be_encrypted_for_are_that_pushs_outcome(client, app, new_session, push_service):
    mallory, victim = (new_session(f"{name}@example.com") for name in ("mallory", "victim"))
    client.post(
        "/api/notifications/subscribe",
        headers={"Authorization": f"Bearer {victim}"},
        json=push_service.subscription("victim"),
    )
    broken = {**push_service.subscription("mallory"), "p256dh": "BAAA", "auth": ""}
    store_subscription(app, user_id_of(app, mallory), broken)
    create(client, {"Authorization": f"Bearer {mallory}"}, remind_at=iso(NOW))
    create(client, {"Authorization": f"Bearer {victim}"}, remind_at=iso(NOW))
    assert send_due(app) == Counter(delivered=1, rejected=1)
    assert [message.name for message in push_service.messages] == ["victim"]
    assert send_due(app, at(hours=1)) == Counter()
    assert push_service.requests == 1


def subscribe_at(client, headers, push_service, endpoint):
    """A subscription with keys of the push service's making, at another endpoint."""
    body = {**push_service.subscription("elsewhere"), "endpoint": endpoint}
    response = client.post("/api/notifications/subscribe", headers=headers, json=body)
    assert response.status_code == 200, response.get_json()


def test_a_push_service_trickling_its_answers_body_holds_up_nobody(
    client, auth, other_auth, app, subscribe, push_service, misbehaving
):
    """201 with `Content-Length: 1000000`, then a byte every 5 s: the push is delivered on its headers."""
    trickling = misbehaving("trickle_body", interval=5.0)
    subscribe_at(client, auth, push_service, trickling.endpoint("slow"))
    subscribe(other_auth, "victim")
    create(client, auth, title="Alice's", remind_at=iso(NOW))
    create(client, other_auth, title="Victim's", remind_at=iso(NOW))
    assert send_due(app) == Counter(delivered=2)
    assert (trickling.requests, push_service.requests) == (1, 1)
    assert [message.name for message in push_service.messages] == ["victim"]
    assert send_due(app, at(hours=1)) == Counter()
    assert (trickling.requests, push_service.requests) == (1, 1)


@pytest.mark.parametrize("behaviour", ["trickle_headers", "hang"])
def test_a_push_service_that_does_not_answer_by_the_deadline_is_retried_and_holds_up_nobody(
    client, auth, other_auth, app, subscribe, push_service, misbehaving, caplog, behaviour
):
    """Headers dripping in faster than any one read's timeout, or no answer at all: the push's whole deadline
    (PUSH_TIMEOUT_SECONDS, 2 s here) ends it."""
    slow = misbehaving(behaviour, interval=0.2)
    subscribe_at(client, auth, push_service, slow.endpoint("slow"))
    subscribe(other_auth, "victim")
    task_id = create(client, auth, title="Alice's", remind_at=iso(NOW))
    create(client, other_auth, title="Victim's", remind_at=iso(NOW))
    assert send_due(app) == Counter(delivered=1, retry=1)
    assert f"push outcomes other than delivered: TimeoutError x1; tasks {task_id}" in caplog.text
    assert [message.name for message in push_service.messages] == ["victim"]
    [waiting] = rows(app, push_delivery)
    assert (waiting.task_id, waiting.attempts, waiting.next_attempt_at) == (task_id, 1, at(seconds=30))


def test_each_outcome_is_recorded_as_soon_as_it_is_known(
    client, auth, other_auth, make_app, subscribe, push_service, misbehaving
):
    """A push that hangs to its deadline does not keep the others' outcomes from being written down."""
    app = make_app(**{**PUSH_CONFIG, "PUSH_TIMEOUT_SECONDS": 8})
    silent = misbehaving("hang")
    subscribe_at(client, auth, push_service, silent.endpoint("silent"))
    subscribe(other_auth, "victim")
    create(client, auth, title="Alice's", remind_at=iso(NOW))
    victims = create(client, other_auth, title="Victim's", remind_at=iso(NOW))
    result = {}
    worker = threading.Thread(target=lambda: result.update(counts=send_due(app)))
    worker.start()
    try:
        wait_for(lambda: victims not in {row.task_id for row in rows(app, push_delivery)} and silent.requests == 1)
        recorded_while_the_other_hung = worker.is_alive()
    finally:
        worker.join(30)
    assert recorded_while_the_other_hung is True
    assert result["counts"] == Counter(delivered=1, retry=1)


def test_a_stopping_pass_cuts_a_hanging_push_and_gives_back_the_pushes_not_started(
    client, auth, other_auth, make_app, subscribe, push_service, misbehaving
):
    app = make_app(**{**PUSH_CONFIG, "PUSH_TIMEOUT_SECONDS": 60, "REMINDER_PUSH_THREADS": 1})
    silent = misbehaving("hang")
    subscribe_at(client, auth, push_service, silent.endpoint("silent"))
    subscribe(other_auth, "victim")
    stuck = create(client, auth, title="Alice's", remind_at=iso(NOW))  # pushed first: its delivery's id is lower
    victims = create(client, other_auth, title="Victim's", remind_at=iso(NOW))
    stop, result = threading.Event(), {}
    worker = Worker.from_app(app)
    loop = threading.Thread(target=lambda: result.update(counts=worker.run_pass(stop, NOW)))
    loop.start()
    try:
        wait_for(lambda: silent.requests == 1)
        stop.set()
        loop.join(30)
    finally:
        stop.set()
        worker.close()
    assert loop.is_alive() is False
    assert result["counts"] == Counter(retry=1, deferred=1)
    assert push_service.requests == 0
    assert sorted((row.task_id, row.attempts, row.claim_token) for row in rows(app, push_delivery)) == [
        (stuck, 1, None),
        (victims, 0, None),
    ]
    assert send_due(app) == Counter(delivered=1)
    assert [message.payload["task_id"] for message in push_service.messages] == [victims]


def test_a_due_date_past_the_calendars_end_in_the_users_zone_is_shown_in_utc(
    client, auth, other_auth, app, subscribe, push_service
):
    """A yearly task due 9998-12-31T23:59:59Z, completed: the next one is due 9999-12-31T23:59:59Z, which in
    Pacific/Kiritimati (UTC+14) would be in the year 10000."""
    subscribe(auth, "alice")
    subscribe(other_auth, "victim")
    first = create(
        client,
        auth,
        title="Yearly",
        due_date="9998-12-31T23:59:59Z",
        remind_at="2000-01-01T00:00:00Z",
        recurrence_pattern="yearly",
    )
    next_task = client.patch(f"/api/tasks/{first}/complete", headers=auth).get_json()["next_task"]
    assert next_task["due_date"] == "9999-12-31T23:59:59+00:00"
    assert client.put("/api/settings", headers=auth, json={"time_zone": "Pacific/Kiritimati"}).status_code == 200
    create(client, other_auth, title="Victim's", remind_at=iso(NOW))
    assert send_due(app) == Counter(delivered=2)
    assert sorted((message.name, message.payload["body"]) for message in push_service.messages) == [
        ("alice", "Due Fri 31 Dec 9999 23:59 UTC"),
        ("victim", "Reminder"),
    ]
    assert send_due(app, at(hours=1)) == Counter()


# -- Bounds on one user ------------------------------------------------------------------------


def test_a_pass_opens_at_most_the_budget_of_connections_for_one_user(make_app, new_session, push_service):
    app = make_app(**PUSH_CONFIG, REMINDER_PUSHES_PER_USER=4)
    client = app.test_client()
    alice, bob = ({"Authorization": f"Bearer {new_session(f'{name}@example.com')}"} for name in ("alice", "bob"))
    for device in ("laptop", "phone", "tablet"):
        client.post("/api/notifications/subscribe", headers=alice, json=push_service.subscription(f"alice-{device}"))
    client.post("/api/notifications/subscribe", headers=bob, json=push_service.subscription("bob"))
    alices = [create(client, alice, title=f"a{number}", remind_at=iso(at(minutes=-number))) for number in range(3)]
    bobs = create(client, bob, title="b", remind_at=iso(NOW))
    # A user's first reminder of a pass always goes, to all three subscriptions; a second would make 6 > 4.
    assert send_due(app) == Counter(delivered=4)
    assert (push_service.connections_opened, push_service.requests) == (4, 4)
    assert send_due(app) == Counter(delivered=3)
    assert send_due(app) == Counter(delivered=3)
    assert send_due(app) == Counter()
    pushed = Counter((message.name, message.payload["task_id"]) for message in push_service.messages)
    expected = {(f"alice-{device}", task_id) for device in ("laptop", "phone", "tablet") for task_id in alices}
    assert pushed == Counter(expected | {("bob", bobs)})
    assert push_service.connections_opened == 10


def test_retries_count_against_the_budget_too(make_app, new_session, push_service):
    app = make_app(**PUSH_CONFIG, REMINDER_PUSHES_PER_USER=2)
    client = app.test_client()
    alice = {"Authorization": f"Bearer {new_session('alice@example.com')}"}
    client.post("/api/notifications/subscribe", headers=alice, json=push_service.subscription("alice"))
    push_service.answer("alice", (503, {}), (503, {}), (503, {}))
    for number in range(3):
        create(client, alice, title=f"a{number}", remind_at=iso(NOW))
    assert send_due(app) == Counter(retry=2)
    assert send_due(app, at(seconds=30)) == Counter(retry=1, delivered=1)
    assert send_due(app, at(minutes=2)) == Counter(delivered=2)
    assert push_service.requests == 6


def test_subscriptions_past_the_cap_stored_before_it_are_not_pushed_to(make_app, new_session, push_service):
    app = make_app(**PUSH_CONFIG, PUSH_SUBSCRIPTIONS_PER_USER=2)
    client = app.test_client()
    token = new_session("alice@example.com")
    user_id = user_id_of(app, token)
    for number in range(4):  # refreshed in this order: 0 first, 3 last
        store_subscription(app, user_id, push_service.subscription(f"device{number}"))
    create(client, {"Authorization": f"Bearer {token}"}, remind_at=iso(NOW))
    assert send_due(app) == Counter(delivered=2)
    assert sorted(message.name for message in push_service.messages) == ["device2", "device3"]


# -- Several workers ---------------------------------------------------------------------------


def insert_due_tasks(app, user_ids, per_user):
    now = utcnow()
    values = [
        {
            "user_id": user_id,
            "title": f"task {number} of {user_id}",
            "completed": False,
            "priority": "medium",
            "tags": [],
            "created_at": now,
            "updated_at": now,
            "remind_at": at(minutes=-(number % 50)),
            "reminder_sent": False,
        }
        for user_id in user_ids
        for number in range(per_user)
    ]
    with get_engine(app).begin() as connection:
        connection.execute(insert(task), values)


# Users, and due tasks per user, of the race on each backend.
RACE = {"postgres": (20, 50), "sqlite": (10, 20)}


@pytest.fixture
def users(backend):
    return RACE[backend][0]


@pytest.fixture
def per_user(backend):
    return RACE[backend][1]


@pytest.mark.backends("postgres", "sqlite")
def test_two_workers_racing_deliver_each_reminder_exactly_once(make_app, new_session, push_service, users, per_user):
    apps = [make_app(**PUSH_CONFIG, REMINDER_BATCH_SIZE=50) for _ in range(2)]  # two machines: two engines
    client = apps[0].test_client()
    user_ids = []
    for number in range(users):
        token = new_session(f"user{number}@example.com")
        headers = {"Authorization": f"Bearer {token}"}
        client.post("/api/notifications/subscribe", headers=headers, json=push_service.subscription(f"user{number}"))
        user_ids.append(user_id_of(apps[0], token))
    insert_due_tasks(apps[0], user_ids, per_user)
    barrier = threading.Barrier(2)
    totals = [None, None]

    def work(index):
        worker = Worker.from_app(apps[index])
        barrier.wait()
        try:
            totals[index] = worker.run_pass(now=NOW)
        finally:
            worker.close()

    threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = users * per_user
    print(f"two workers: {totals[0]['delivered']} and {totals[1]['delivered']} of {expected} reminders")
    assert totals[0]["delivered"] + totals[1]["delivered"] == expected
    assert push_service.failures == []
    pushed = Counter((message.name, message.payload["task_id"]) for message in push_service.messages)
    assert len(pushed) == expected
    assert set(pushed.values()) == {1}
    with get_engine(apps[0]).connect() as connection:
        assert connection.execute(select(func.count()).where(task.c.reminder_sent.is_(False))).scalar() == 0
        assert connection.execute(select(func.count()).select_from(push_delivery)).scalar() == 0


# -- The worker process ------------------------------------------------------------------------


def worker_environment(database_url, **extra):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("VAPID_", "REMINDER_"))}
    return {
        **environment,
        **VAPID,
        "DATABASE_URL": database_url,
        "PUSH_ALLOW_INSECURE_ENDPOINTS": "true",
        "REDIS_URL": "",
        **extra,
    }


def test_sigterm_lets_the_push_in_flight_end_gives_back_the_rest_and_exits_0(
    client, auth, app, subscribe, push_service, database_url
):
    subscribe(auth, "alice")
    task_ids = []
    for number in range(10):
        past = iso(datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=number + 1))
        task_ids.append(create(client, auth, title=f"t{number}", remind_at=past))
    push_service.delay = 1.0
    environment = worker_environment(
        database_url, REMINDER_BATCH_SIZE="5", REMINDER_PUSH_THREADS="1", REMINDER_POLL_SECONDS="60"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "todo_api", "reminders", "run"],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while push_service.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # while the first push waits for its answer
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "reminder worker stopped" in stderr
    assert len(push_service.payloads()) == 1  # the push in flight ended and was recorded; no other was started
    given_back = rows(app, push_delivery)
    assert [(row.attempts, row.claim_token) for row in given_back] == [(0, None)] * 4  # the rest of its batch
    sent = [task["reminder_sent"] for task in client.get("/api/tasks", headers=auth).get_json()["data"]]
    assert Counter(sent) == {True: 5, False: 5}
    assert send_due(app, utcnow()) == Counter(delivered=9)
    assert sorted(payload["task_id"] for payload in push_service.payloads()) == sorted(task_ids)


def test_a_failed_pass_is_logged_by_type_and_the_loop_goes_on(make_app, caplog):
    app = make_app(**PUSH_CONFIG)
    unreachable = normalize_url(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    worker = Worker(create_engine(unreachable), Settings.from_config(app.config), signer_from_config(app.config))
    stop = threading.Event()
    loop = threading.Thread(target=run_forever, args=(worker, 0.05, stop))
    loop.start()
    deadline = time.monotonic() + 10
    while caplog.text.count("reminder pass failed: OperationalError") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join(5)
    worker.close()
    assert not loop.is_alive()
    assert caplog.text.count("reminder pass failed: OperationalError") >= 3


@pytest.fixture
def private_cluster():
    with running_cluster("the restart drill needs") as cluster:
        yield cluster


def wait_for(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.postgres
def test_the_worker_survives_a_postgres_restart(private_cluster, push_service, caplog):
    app = create_app(base_config(private_cluster.url, **PUSH_CONFIG))
    engine = get_engine(app)
    create_schema(engine, app.config, with_auth_tables=True)
    with engine.begin() as connection:
        token = create_user_session(connection, app.config, "drill@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    client.post("/api/notifications/subscribe", headers=headers, json=push_service.subscription("drill"))
    user_id = user_id_of(app, token)

    def due_task(title):
        now = utcnow()
        values = {"user_id": user_id, "title": title, "completed": False, "priority": "medium", "tags": []}
        values.update(created_at=now, updated_at=now, remind_at=now, reminder_sent=False)
        own = create_engine(normalize_url(private_cluster.url))  # not the worker's pool
        with own.begin() as connection:
            connection.execute(insert(task), values)
        own.dispose()

    worker = Worker.from_app(app)
    stop = threading.Event()
    loop = threading.Thread(target=run_forever, args=(worker, 0.1, stop))
    due_task("before")
    loop.start()
    try:
        wait_for(lambda: len(push_service.messages) == 1)
        private_cluster.stop("immediate")  # a crash: the worker's pooled connections are dead
        wait_for(lambda: "reminder pass failed: OperationalError" in caplog.text)
        private_cluster.start()
        due_task("after")
        wait_for(lambda: len(push_service.messages) == 2)
    finally:
        stop.set()
        loop.join(10)
        worker.close()
        engine.dispose()
    assert not loop.is_alive()
    assert [payload["title"] for payload in push_service.payloads()] == ["before", "after"]


# -- Commands ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("VAPID_PRIVATE_KEY", None, "VAPID_PRIVATE_KEY is not set"),
        ("VAPID_PUBLIC_KEY", None, "VAPID_PUBLIC_KEY is not set"),
        ("VAPID_SUBJECT", None, "VAPID_SUBJECT is not set"),
        ("VAPID_PRIVATE_KEY", "not a key", "VAPID_PRIVATE_KEY is not a valid key"),
        ("VAPID_PUBLIC_KEY", generate_vapid_keys()[0], "VAPID_PUBLIC_KEY is not the public key of VAPID_PRIVATE_KEY"),
        ("VAPID_SUBJECT", "reminders@example.com", "VAPID_SUBJECT must be a mailto: address or an https: URL"),
        ("VAPID_SUBJECT", "mailto:nobody", "VAPID_SUBJECT must be a mailto: address or an https: URL"),
    ],
)
@pytest.mark.parametrize("command", [["reminders", "send-due"], ["reminders", "run"]])
@pytest.mark.backends("sqlite")
def test_the_worker_refuses_to_start_without_its_vapid_settings(make_app, command, setting, value, message):
    app = make_app(**{**PUSH_CONFIG, setting: value})
    result = app.test_cli_runner().invoke(args=command)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {message}")


@pytest.mark.backends("sqlite")
def test_vapid_keys_prints_a_pair_the_frontend_and_the_worker_accept(make_app):
    result = make_app().test_cli_runner().invoke(args=["vapid-keys"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["VAPID_PUBLIC_KEY", "VAPID_PRIVATE_KEY"]
    public_key, private_key = (line.split("=", 1)[1] for line in lines)
    # The frontend's urlBase64ToUint8Array: pad, map to standard base64, decode: an uncompressed P-256 point.
    point = b64url_decode(public_key)
    assert (len(point), point[0]) == (65, 4)
    assert len(b64url_decode(private_key)) == 32
    app = make_app(VAPID_PUBLIC_KEY=public_key, VAPID_PRIVATE_KEY=private_key, VAPID_SUBJECT="mailto:a@example.com")
    Worker.from_app(app).close()  # it checks that the public key is the private key's


@pytest.mark.backends("sqlite")
def test_send_due_prints_what_became_of_the_reminders(client, auth, app, subscribe, push_service):
    subscribe(auth, "alice")
    client.post("/api/tasks", headers=auth, json={"title": "t", "remind_at": iso(datetime.now(UTC))})
    result = app.test_cli_runner().invoke(args=["reminders", "send-due"])
    assert (result.exit_code, result.output) == (
        0,
        "Reminders: 1 delivered, 0 retry, 0 gone, 0 rejected, 0 given_up, 0 dropped, 0 deferred.\n",
    )
