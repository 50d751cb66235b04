"""The reminder worker as production runs it (`flask --app todo_api reminders send-due` and `... run`, in a process
of its own), on a Postgres cluster of the drills' own, against push services on 127.0.0.1 that misbehave.

1. One pass meets every kind of trouble at once: a subscription stored before today's rules (a host label over
   63 characters), a push service trickling its answer's body, one that never answers, and a due date in the
   year 9999 that the user's zone would put in the year 10000. The pass ends within the push deadline plus a
   margin, every push has its own outcome, the victim is pushed exactly once, and the next pass pushes nothing.
2. SIGTERM while a push service hangs: the worker exits 0 within the drills' grace period, with the hanging
   push recorded for a retry.
3. Addresses in every notation: refused at subscribe time (422 naming `endpoint`), and, stored anyway, never
   connected to: those that alias 127.0.0.1 point at a listener that counts connections. (Private and
   link-local ones are only ever checked, never connected to.)
4. One user's 200 subscriptions and 10 due reminders: 10 subscriptions kept, and a pass opens at most
   REMINDER_PUSHES_PER_USER connections for the user.

Traffic goes to 127.0.0.1 only. Each drill prints its figures (run pytest with -s to see them).
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from drills.harness import GRACEFUL_TIMEOUT
from support import REPO, base_config, user_id_of
from support.push_service import PushService
from todo_api import create_app
from todo_api.db.connections import get_engine
from todo_api.reminders.push import generate_vapid_keys

pytestmark = pytest.mark.postgres

VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY = generate_vapid_keys()
VAPID = {
    "VAPID_PUBLIC_KEY": VAPID_PUBLIC_KEY,
    "VAPID_PRIVATE_KEY": VAPID_PRIVATE_KEY,
    "VAPID_SUBJECT": "mailto:drills@example.com",
}
PUSH_TIMEOUT = 10  # PUSH_TIMEOUT_SECONDS's default
# What a pass may take beyond the push deadline: starting Python and the app, and two short transactions, on a
# loaded 2-core machine.
MARGIN = 15
NO_OUTCOMES = "0 delivered, 0 retry, 0 gone, 0 rejected, 0 given_up, 0 dropped, 0 deferred"


@pytest.fixture
def api(cluster, sql):
    """The API on the cluster (tables emptied), with PUSH_ALLOW_INSECURE_ENDPOINTS as the drills' push services
    are on 127.0.0.1; `api.user(name)` makes a user and returns (headers, user id)."""
    sql("TRUNCATE task, push_subscription, push_delivery, user_settings")
    app = create_app(base_config(cluster.url, PUSH_ALLOW_INSECURE_ENDPOINTS=True))

    class Api:
        client = app.test_client()

        @staticmethod
        def user(name):
            from todo_api.cli import create_user_session

            with get_engine(app).begin() as connection:
                token = create_user_session(connection, app.config, f"{name}-{time.time_ns()}@example.com")
            return {"Authorization": f"Bearer {token}"}, user_id_of(app, token)

        @classmethod
        def subscribe(cls, headers, subscription):
            return cls.client.post("/api/notifications/subscribe", headers=headers, json=subscription)

        @classmethod
        def due_task(cls, headers, **fields):
            past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
            response = cls.client.post("/api/tasks", headers=headers, json={"title": "t", "remind_at": past, **fields})
            assert response.status_code == 200, response.get_json()
            return response.get_json()["data"]["id"]

    yield Api
    get_engine(app).dispose()


@pytest.fixture
def push_service():
    service = PushService(VAPID_PUBLIC_KEY).start()
    yield service
    service.stop()


def worker_environment(cluster, **extra):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("VAPID_", "REMINDER_"))}
    environment.pop("PUSH_TIMEOUT_SECONDS", None)
    return {
        **environment,
        **VAPID,
        "DATABASE_URL": cluster.url,
        "PUSH_ALLOW_INSECURE_ENDPOINTS": "true",
        "REDIS_URL": "",
        **extra,
    }


def worker_command(*args):
    return [sys.executable, "-m", "flask", "--app", "todo_api", "reminders", *args]


def send_due(cluster, **extra):
    """One pass in a process of its own: (its output line, seconds it took)."""
    started = time.monotonic()
    result = subprocess.run(
        worker_command("send-due"),
        cwd=REPO,
        env=worker_environment(cluster, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), elapsed, result.stderr


def store_subscription(sql, user_id, subscription):
    sql(
        "INSERT INTO push_subscription (user_id, endpoint, p256dh, auth, created_at, updated_at) "
        "VALUES (:user_id, :endpoint, :p256dh, :auth, now(), now())",
        user_id=user_id,
        **subscription,
    )


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- Drill 1 ----------------------------------------------------------------------------------


def test_one_pass_meets_every_kind_of_trouble_and_pushes_the_victim_once(cluster, api, sql, push_service, misbehaving):
    trickling, silent = misbehaving("trickle_body", interval=5.0), misbehaving("hang")
    victim, _ = api.user("victim")
    assert api.subscribe(victim, push_service.subscription("victim")).status_code == 200
    victims = api.due_task(victim, title="Victim's")

    mallory, mallory_id = api.user("mallory")
    poisoned = {**push_service.subscription("mallory"), "endpoint": "https://" + "a" * 64 + ".example.com/x"}
    refused = api.subscribe(mallory, poisoned)
    assert (refused.status_code, list(refused.get_json()["errors"])) == (422, ["endpoint"])
    store_subscription(sql, mallory_id, poisoned)  # as stored before the rule
    api.due_task(mallory, title="Mallory's")

    for name, service in (("trickler", trickling), ("silent", silent)):
        headers, _ = api.user(name)
        keys = push_service.subscription(name)
        assert api.subscribe(headers, {**keys, "endpoint": service.endpoint(name)}).status_code == 200
        api.due_task(headers, title=f"{name}'s")

    yearly, _ = api.user("yearly")
    assert api.subscribe(yearly, push_service.subscription("yearly")).status_code == 200
    first = api.due_task(
        yearly, due_date="9998-12-31T23:59:59Z", remind_at="2000-01-01T00:00:00Z", recurrence_pattern="yearly"
    )
    completed = api.client.patch(f"/api/tasks/{first}/complete", headers=yearly).get_json()
    assert completed["next_task"]["due_date"] == "9999-12-31T23:59:59+00:00"
    assert api.client.put("/api/settings", headers=yearly, json={"time_zone": "Pacific/Kiritimati"}).status_code == 200

    output, elapsed, stderr = send_due(cluster)
    print(
        f"\n[drill: one pass, every trouble] {output} in {elapsed:.2f} s (push deadline {PUSH_TIMEOUT} s); "
        f"trickling service: {trickling.requests} request; silent one: {silent.requests}"
    )
    assert output == "Reminders: 3 delivered, 1 retry, 0 gone, 1 rejected, 0 given_up, 0 dropped, 0 deferred."
    assert elapsed < PUSH_TIMEOUT + MARGIN
    pushed = Counter(message.name for message in push_service.messages)
    assert pushed == {"victim": 1, "yearly": 1}
    [victim_message] = [message for message in push_service.messages if message.name == "victim"]
    assert victim_message.payload["task_id"] == victims
    [yearly_message] = [message for message in push_service.messages if message.name == "yearly"]
    assert yearly_message.payload["body"] == "Due Fri 31 Dec 9999 23:59 UTC"
    assert (trickling.requests, silent.requests) == (1, 1)
    assert "Traceback" not in stderr
    assert sql("SELECT count(*) FROM push_delivery WHERE claim_token IS NOT NULL") == [(0,)]

    output, elapsed, _ = send_due(cluster)
    print(f"[drill: the next pass] {output} in {elapsed:.2f} s")
    assert output == f"Reminders: {NO_OUTCOMES}."
    assert Counter(message.name for message in push_service.messages) == {"victim": 1, "yearly": 1}
    assert (trickling.requests, silent.requests) == (1, 1)


# -- Drill 2 ----------------------------------------------------------------------------------


def test_sigterm_while_a_push_service_hangs_exits_within_the_grace_period(cluster, api, sql, push_service, misbehaving):
    silent = misbehaving("hang")
    stuck, _ = api.user("stuck")
    assert (
        api.subscribe(stuck, {**push_service.subscription("stuck"), "endpoint": silent.endpoint("stuck")}).status_code
        == 200
    )
    stucks = api.due_task(stuck, title="Stuck's")
    victim, _ = api.user("victim")
    assert api.subscribe(victim, push_service.subscription("victim")).status_code == 200
    api.due_task(victim, title="Victim's")

    process = subprocess.Popen(
        worker_command("run"),
        cwd=REPO,
        env=worker_environment(cluster, REMINDER_POLL_SECONDS="60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: silent.requests == 1 and len(push_service.messages) == 1)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        shutdown = time.monotonic() - started
    finally:
        process.kill()
    print(
        f"\n[drill: SIGTERM while a push service hangs] exit {process.returncode} after {shutdown:.2f} s "
        f"(push deadline {PUSH_TIMEOUT} s, grace period {GRACEFUL_TIMEOUT} s)"
    )
    assert process.returncode == 0, stderr
    assert shutdown < GRACEFUL_TIMEOUT
    assert "reminder worker stopped" in stderr
    assert [message.name for message in push_service.messages] == ["victim"]
    assert sql("SELECT task_id, attempts, claim_token FROM push_delivery") == [(stucks, 1, None)]


# -- Drill 3 ----------------------------------------------------------------------------------

# Every notation a resolver reads as an address. At subscribe time all are refused; stored anyway, those that
# stand for 127.0.0.1 are given to the worker, pointing at a listener: a connection would be counted there.
EVERY_NOTATION = [
    "127.1",
    "0177.0.0.1",
    "0x7f.1",
    "0x7f.0.0.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "%31%32%37.0.0.1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:7f00:1]",
]
PRIVATE_AND_LINK_LOCAL = [
    "169.254.169.254",
    "169.254.43518",
    "0xa9fea9fe",
    "2852039166",
    "10.0.0.1",
    "10.1",
    "172.16.0.1",
    "192.168.0.1",
    "100.64.0.1",
    "[fc00::1]",
    "[fe80::1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:10.0.0.1]",
    "[::127.0.0.1]",
    "metadata.google.internal",
]


def test_addresses_in_every_notation_are_refused_and_never_connected_to(cluster, api, sql, push_service, misbehaving):
    listener = misbehaving("hang")
    mallory, mallory_id = api.user("mallory")
    refusals = Counter()
    for host in EVERY_NOTATION + PRIVATE_AND_LINK_LOCAL:
        for scheme in ("https", "http"):
            subscription = {**push_service.subscription("m"), "endpoint": f"{scheme}://{host}:{listener.port}/push/x"}
            response = api.subscribe(mallory, subscription)
            refusals[(response.status_code, tuple(response.get_json().get("errors", {})))] += 1
    assert refusals == {(422, ("endpoint",)): 2 * len(EVERY_NOTATION + PRIVATE_AND_LINK_LOCAL)}
    assert sql("SELECT count(*) FROM push_subscription") == [(0,)]

    for number, host in enumerate(EVERY_NOTATION):
        endpoint = f"http://{host}:{listener.port}/push/{number}"
        store_subscription(sql, mallory_id, {**push_service.subscription(f"m{number}"), "endpoint": endpoint})
    sql("UPDATE push_subscription SET updated_at = now()")
    victim, _ = api.user("victim")
    assert api.subscribe(victim, push_service.subscription("victim")).status_code == 200
    api.due_task(victim, title="Victim's")
    api.due_task(mallory, title="Mallory's")
    output, elapsed, _ = send_due(cluster, PUSH_SUBSCRIPTIONS_PER_USER="20")
    print(
        f"\n[drill: every notation] {len(EVERY_NOTATION + PRIVATE_AND_LINK_LOCAL) * 2} subscribe attempts, all 422; "
        f"{len(EVERY_NOTATION)} stored anyway: {output}; connections to the listener: {listener.connections_opened}"
    )
    assert output == (
        f"Reminders: 1 delivered, 0 retry, 0 gone, {len(EVERY_NOTATION)} rejected, 0 given_up, 0 dropped, 0 deferred."
    )
    assert listener.connections_opened == 0
    assert [message.name for message in push_service.messages] == ["victim"]


# -- Drill 4 ----------------------------------------------------------------------------------


def test_one_users_subscriptions_bound_the_connections_of_a_pass(cluster, api, sql, push_service):
    mallory, _ = api.user("mallory")
    statuses = Counter(
        api.subscribe(mallory, push_service.subscription(f"m{number}")).status_code for number in range(200)
    )
    assert statuses == {200: 200}
    assert sql("SELECT count(*) FROM push_subscription") == [(10,)]
    for number in range(10):
        api.due_task(mallory, title=f"Mallory's {number}")
    passes = []
    for _ in range(3):
        before = push_service.connections_opened
        output, elapsed, _ = send_due(cluster)
        passes.append((output, push_service.connections_opened - before))
    print(f"\n[drill: 200 subscriptions, 10 due reminders] per pass (outcomes, connections): {passes}")
    assert passes == [
        ("Reminders: 50 delivered, 0 retry, 0 gone, 0 rejected, 0 given_up, 0 dropped, 0 deferred.", 50),
        ("Reminders: 50 delivered, 0 retry, 0 gone, 0 rejected, 0 given_up, 0 dropped, 0 deferred.", 50),
        (f"Reminders: {NO_OUTCOMES}.", 0),
    ]
    assert set(Counter((message.name, message.payload["task_id"]) for message in push_service.messages).values()) == {1}
    assert len(push_service.messages) == 100
