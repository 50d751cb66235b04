"""Rate limits: per user on /api, per client address everywhere but /health, each user's budget of response
bytes; counted by `limits`, in memory or in Redis.

The Redis tests use the local server (REDIS_URL_FOR_TESTS, by default
127.0.0.1:6379) under a key prefix of their own, deleted afterwards, and a
private redis-server for the outage drill.
"""

import os
import shutil
import subprocess
import time
import uuid

import pytest
import redis

from support import base_config
from support import free_port as closed_port
from todo_api import create_app
from todo_api.config import from_environment
from todo_api.db.connections import get_engine
from todo_api.ratelimit import limits as ratelimit

# The limiter does not touch the database: tests that need an app build it on SQLite only.
sqlite_only = pytest.mark.backends("sqlite")

REDIS_URL = os.environ.get("REDIS_URL_FOR_TESTS", "redis://127.0.0.1:6379/0")
FRONTEND = "http://localhost:3000"
HIGH = "1000 per minute"


@pytest.fixture
def limited(make_app):
    """Apps with rate limits on, counted in memory and set high, unless told otherwise."""

    def build(**overrides):
        settings = {"RATELIMIT_ENABLED": True, "RATELIMIT_PER_USER": HIGH, "RATELIMIT_PER_IP": HIGH, **overrides}
        return make_app(**settings)

    return build


@pytest.fixture
def redis_prefix():
    """A key prefix for this test alone; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis is needed for this test and is not reachable at {REDIS_URL}: {error}")
    prefix = f"todo-api-test-{uuid.uuid4().hex}"
    yield prefix
    for key in client.scan_iter(match=f"*{prefix}*"):
        client.delete(key)
    client.close()


def redis_keys(prefix):
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sorted(key.decode() for key in client.scan_iter(match=f"*{prefix}*"))
    finally:
        client.close()


def rate_headers(response):
    return {name: response.headers.get(name) for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "Retry-After")}


def assert_reset_within_window(response, window_seconds=60):
    reset = int(response.headers["X-RateLimit-Reset"])
    now = time.time()
    assert now <= reset <= now + window_seconds + 1


# -- Per user ----------------------------------------------------------------


@sqlite_only
def test_per_user_limit_refuses_one_user_while_another_on_the_same_address_goes_on(limited, new_session):
    app = limited(RATELIMIT_PER_USER="3 per minute")
    client = app.test_client()
    alice = {"Authorization": f"Bearer {new_session('alice@example.com')}"}
    bob = {"Authorization": f"Bearer {new_session('bob@example.com')}"}

    created = client.post("/api/tasks", headers=alice, json={"title": "one"})
    assert created.status_code == 200
    task_id = created.get_json()["data"]["id"]
    assert client.get(f"/api/tasks/{task_id}", headers=alice).status_code == 200
    assert client.get("/api/tasks", headers=alice).status_code == 200  # one budget for every /api route
    refused = client.get("/api/tasks", headers=alice)
    assert refused.status_code == 429
    assert refused.get_json() == {"detail": "Rate limit exceeded: 3 per 1 minute per user"}

    for _ in range(3):
        assert client.get("/api/tasks", headers=bob).status_code == 200
    assert client.get("/api/tasks", headers=bob).status_code == 429


@sqlite_only
def test_a_refused_request_changes_nothing(limited, auth):
    app = limited(RATELIMIT_PER_USER="2 per minute")
    client = app.test_client()
    assert client.post("/api/tasks", headers=auth, json={"title": "kept"}).status_code == 200
    assert client.get("/api/tasks", headers=auth).status_code == 200
    refused = client.post("/api/tasks", headers=auth, json={"title": "refused"})
    assert refused.status_code == 429
    with get_engine(app).connect() as connection:
        titles = [row.title for row in connection.exec_driver_sql("SELECT title FROM task")]
    assert titles == ["kept"]


@sqlite_only
def test_the_per_user_limit_counts_only_authenticated_requests(limited, auth):
    """It is checked after authentication: a bad token costs the user nothing, and is told 401, not 429."""
    app = limited(RATELIMIT_PER_USER="2 per minute")
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/tasks", headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert client.get("/api/tasks", headers=auth).status_code == 429
    assert client.get("/api/tasks", headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401


# -- Per client address --------------------------------------------------------


@sqlite_only
def test_per_address_limit_counts_every_route_but_health_and_preflights(limited, auth):
    app = limited(RATELIMIT_PER_IP="5 per minute")
    client = app.test_client()
    assert client.get("/", headers=auth).status_code == 200
    assert client.get("/api/tasks").status_code == 401  # counted before authentication
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert client.get("/no-such-route").status_code == 404
    assert client.get("/health/ready").status_code == 200
    refused = client.get("/api/tasks", headers=auth)
    assert refused.status_code == 429
    assert refused.get_json() == {"detail": "Rate limit exceeded: 5 per 1 minute per client address"}
    assert client.get("/").status_code == 429
    assert client.get("/no-such-route").status_code == 429

    for _ in range(10):
        health = client.get("/health")
        assert health.status_code == 200
        assert "X-RateLimit-Limit" not in health.headers
        preflight = client.options("/api/tasks", headers={"Origin": FRONTEND, "Access-Control-Request-Method": "GET"})
        assert preflight.status_code == 200
        assert "X-RateLimit-Limit" not in preflight.headers

    other = client.get("/api/tasks", headers=auth, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert other.status_code == 200


@sqlite_only
def test_forwarded_for_is_ignored_without_trusted_proxies(limited):
    client = limited(RATELIMIT_PER_IP="2 per minute").test_client()
    for forwarded in ("198.51.100.1", "198.51.100.2"):
        assert client.get("/", headers={"X-Forwarded-For": forwarded}).status_code == 200
    assert client.get("/", headers={"X-Forwarded-For": "198.51.100.3"}).status_code == 429


@sqlite_only
def test_behind_a_trusted_proxy_the_address_it_saw_is_limited(limited):
    """With one trusted hop, the last X-Forwarded-For entry is the client; earlier ones are the client's own words."""
    client = limited(RATELIMIT_PER_IP="2 per minute", TRUSTED_PROXY_HOPS=1).test_client()
    for spoofed in ("192.0.2.1", "192.0.2.2"):
        response = client.get("/", headers={"X-Forwarded-For": f"{spoofed}, 198.51.100.1"})
        assert response.status_code == 200
    assert client.get("/", headers={"X-Forwarded-For": "192.0.2.3, 198.51.100.1"}).status_code == 429
    assert client.get("/", headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200


# -- Headers and body ----------------------------------------------------------


@sqlite_only
def test_limited_responses_count_down_in_their_headers(limited, auth):
    app = limited(RATELIMIT_PER_USER="3 per minute", RATELIMIT_PER_IP="100 per minute")
    client = app.test_client()
    seen = []
    for _ in range(3):
        response = client.get("/api/tasks", headers=auth)
        assert response.status_code == 200
        assert_reset_within_window(response)
        seen.append(rate_headers(response))
    assert seen == [
        {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "2", "Retry-After": None},
        {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "1", "Retry-After": None},
        {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0", "Retry-After": None},
    ]
    # Outside /api, the per-address limit is the one that applies.
    root = client.get("/")
    assert rate_headers(root) == {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "96", "Retry-After": None}


@sqlite_only
def test_429_is_json_with_retry_after_and_cors_headers(limited, auth):
    app = limited(RATELIMIT_PER_USER="1 per minute")
    client = app.test_client()
    assert client.get("/api/tasks", headers=auth).status_code == 200
    refused = client.get("/api/tasks", headers={"Origin": FRONTEND, **auth})
    assert refused.status_code == 429
    assert refused.mimetype == "application/json"
    assert refused.get_json() == {"detail": "Rate limit exceeded: 1 per 1 minute per user"}
    assert_reset_within_window(refused)
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    assert abs(int(refused.headers["X-RateLimit-Reset"]) - time.time() - retry_after) <= 1
    assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == ("1", "0")
    # The browser lets the frontend read the response, and these headers.
    assert refused.headers["Access-Control-Allow-Origin"] == FRONTEND
    exposed = {name.strip() for name in refused.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {
        "ETag",
        "Idempotent-Replayed",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Retry-After",
    }


@sqlite_only
def test_headers_can_be_turned_off(limited, auth):
    client = limited(RATELIMIT_PER_USER="1 per minute", RATELIMIT_HEADERS_ENABLED=False).test_client()
    ok = client.get("/api/tasks", headers=auth)
    refused = client.get("/api/tasks", headers=auth)
    assert (ok.status_code, refused.status_code) == (200, 429)
    for response in (ok, refused):
        assert not {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} & set(response.headers.keys())
    # A client that was refused is still told when to come back.
    assert "Retry-After" not in ok.headers
    assert 1 <= int(refused.headers["Retry-After"]) <= 61


def test_a_database_outage_keeps_its_own_retry_after():
    app = create_app(
        base_config(
            "postgresql://postgres@127.0.0.1:1/nowhere",
            DATABASE_CONNECT_TIMEOUT=1,
            RATELIMIT_ENABLED=True,
            RATELIMIT_PER_IP="10 per minute",
        )
    )
    response = app.test_client().get("/api/tasks", headers={"Authorization": "Bearer " + "a" * 32})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert rate_headers(response) == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9", "Retry-After": "5"}


# -- Configuration ---------------------------------------------------------------


@sqlite_only
def test_limits_can_be_turned_off(limited, auth):
    client = limited(
        RATELIMIT_ENABLED=False, RATELIMIT_PER_USER="1 per minute", RATELIMIT_PER_IP="1 per minute"
    ).test_client()
    for _ in range(5):
        response = client.get("/api/tasks", headers=auth)
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers


def test_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("RATELIMIT_ENABLED", "false")
    monkeypatch.setenv("RATELIMIT_PER_USER", "10 per second")
    monkeypatch.setenv("RATELIMIT_PER_IP", "100/minute")
    monkeypatch.setenv("RATELIMIT_KIB_PER_USER", "5000 per hour")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/1")
    monkeypatch.setenv("TRUSTED_PROXY_HOPS", "2")
    config = from_environment()
    assert (
        config["RATELIMIT_ENABLED"],
        config["RATELIMIT_PER_USER"],
        config["RATELIMIT_PER_IP"],
        config["RATELIMIT_KIB_PER_USER"],
        config["REDIS_URL"],
        config["TRUSTED_PROXY_HOPS"],
    ) == (False, "10 per second", "100/minute", "5000 per hour", "redis://cache.example:6379/1", 2)


def test_defaults(monkeypatch):
    for name in (
        "RATELIMIT_ENABLED",
        "RATELIMIT_PER_USER",
        "RATELIMIT_PER_IP",
        "RATELIMIT_DOCS",
        "RATELIMIT_HEADERS_ENABLED",
        "RATELIMIT_KEY_PREFIX",
        "RATELIMIT_KIB_PER_USER",
        "REDIS_URL",
        "TRUSTED_PROXY_HOPS",
    ):
        monkeypatch.delenv(name, raising=False)
    config = from_environment()
    assert {
        name: config[name]
        for name in (
            "RATELIMIT_ENABLED",
            "RATELIMIT_PER_USER",
            "RATELIMIT_PER_IP",
            "RATELIMIT_DOCS",
            "RATELIMIT_HEADERS_ENABLED",
            "RATELIMIT_KEY_PREFIX",
            "RATELIMIT_KIB_PER_USER",
            "REDIS_URL",
            "TRUSTED_PROXY_HOPS",
        )
    } == {
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_PER_USER": "1800 per minute",
        "RATELIMIT_PER_IP": "6000 per minute",
        "RATELIMIT_DOCS": "60 per minute",
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_KEY_PREFIX": "todo-api",
        "RATELIMIT_KIB_PER_USER": "131072 per minute",
        "REDIS_URL": None,
        "TRUSTED_PROXY_HOPS": 0,
    }


@sqlite_only
@pytest.mark.parametrize(
    "setting", ["RATELIMIT_PER_USER", "RATELIMIT_PER_IP", "RATELIMIT_DOCS", "RATELIMIT_KIB_PER_USER"]
)
def test_a_malformed_limit_names_its_setting(limited, setting):
    with pytest.raises(RuntimeError, match=setting):
        limited(**{setting: "lots per fortnight"})


# -- Redis -----------------------------------------------------------------------


@sqlite_only
@pytest.mark.redis
def test_two_workers_on_one_redis_share_the_limit(limited, auth, redis_prefix):
    settings = {"REDIS_URL": REDIS_URL, "RATELIMIT_KEY_PREFIX": redis_prefix, "RATELIMIT_PER_USER": "4 per minute"}
    first, second = limited(**settings).test_client(), limited(**settings).test_client()
    remaining = []
    for client in (first, second, first, second):
        response = client.get("/api/tasks", headers=auth)
        assert response.status_code == 200
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["3", "2", "1", "0"]
    assert first.get("/api/tasks", headers=auth).status_code == 429
    assert second.get("/api/tasks", headers=auth).status_code == 429
    keys = redis_keys(redis_prefix)
    assert len(keys) == 2
    assert [key.split("/")[3] for key in keys] == ["ip", "user"]


@sqlite_only
def test_an_unreachable_redis_does_not_break_requests(limited, auth):
    """Counting falls back to memory at once; no request waits for Redis or fails."""
    app = limited(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0", RATELIMIT_PER_USER="3 per minute")
    client = app.test_client()
    started = time.monotonic()
    statuses = [client.get("/api/tasks", headers=auth).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert client.get("/health").status_code == 200
    assert time.monotonic() - started < 2  # no retries with backoff against a dead server


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own, which it may stop."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is needed for this test")
    port = closed_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield url, process
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=10)


@sqlite_only
@pytest.mark.redis
def test_redis_going_down_while_serving_does_not_break_requests(limited, auth, private_redis):
    url, process = private_redis
    client = limited(REDIS_URL=url, RATELIMIT_PER_USER="3 per minute").test_client()
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert redis.Redis.from_url(url).dbsize() == 2  # counted in Redis
    process.terminate()
    process.wait(timeout=10)
    # Memory counts from zero: the fallback keeps limiting, per worker.
    statuses = [client.get("/api/tasks", headers=auth).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


# -- Counters in Redis ---------------------------------------------------------------


def script_runs(url):
    """How many times Redis ran a script (EVALSHA or EVAL: limits' counting), whatever the outcome."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(
        stats.get(f"cmdstat_{command}", {}).get(field, 0)
        for command in ("evalsha", "eval")
        for field in ("calls", "rejected_calls")
    )


@sqlite_only
@pytest.mark.redis
def test_each_limit_is_one_counter_in_redis_under_flask_limiters_keys(limited, auth, private_redis):
    url, _process = private_redis
    app = limited(REDIS_URL=url, RATELIMIT_PER_USER="100 per minute", RATELIMIT_PER_IP="200 per minute")
    client = app.test_client()
    for path, headers in [("/api/tasks", auth), ("/api/tasks", auth), ("/", {}), ("/openapi.json", {}), ("/api/x", {})]:
        client.get(path, headers=headers)
    store = redis.Redis.from_url(url)
    counts = {key.decode(): int(store.get(key)) for key in store.scan_iter()}
    user = next(key for key in counts if "/user/" in key).split("/")[2]
    assert counts == {
        "LIMITS:LIMITER/todo-api/ip:127.0.0.1/ip/200/1/minute": 5,
        f"LIMITS:LIMITER/todo-api/{user}/user/100/1/minute": 2,
        "LIMITS:LIMITER/todo-api/ip:127.0.0.1/docs/60/1/minute": 1,
    }
    ttl = store.ttl("LIMITS:LIMITER/todo-api/ip:127.0.0.1/ip/200/1/minute")
    assert 55 <= ttl <= 60


@sqlite_only
def test_an_address_over_its_budget_is_refused_before_authentication(limited, auth):
    client = limited(RATELIMIT_PER_IP="3 per minute").test_client()
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 200]
    refused = client.get("/api/tasks", headers=auth)
    assert (refused.status_code, refused.get_json()) == (
        429,
        {"detail": "Rate limit exceeded: 3 per 1 minute per client address"},
    )
    # A bad token would be 401 after a session lookup: it is refused before, like a good one.
    for headers in ({"Authorization": "Bearer " + "x" * 32}, auth, {}):
        response = client.get("/api/tasks", headers=headers)
        assert (response.status_code, response.headers["X-RateLimit-Remaining"]) == (429, "0")
        assert 1 <= int(response.headers["Retry-After"]) <= 61
    assert client.get("/api/tasks", headers=auth, environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 200


@sqlite_only
def test_requests_that_fail_authentication_count_against_their_address(limited):
    client = limited(RATELIMIT_PER_IP="2 per minute").test_client()
    bad = {"Authorization": "Bearer " + "x" * 32}
    responses = [client.get("/api/tasks", headers=bad) for _ in range(2)]
    assert [(r.status_code, r.headers["X-RateLimit-Remaining"]) for r in responses] == [(401, "1"), (401, "0")]
    assert client.get("/").status_code == 429


@sqlite_only
def test_with_several_limits_in_a_setting_all_hold_and_the_headers_show_the_tightest(limited, auth):
    client = limited(RATELIMIT_PER_USER="3 per minute; 2 per hour").test_client()
    first = client.get("/api/tasks", headers=auth)
    assert rate_headers(first) == {"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "1", "Retry-After": None}
    assert int(first.headers["X-RateLimit-Reset"]) - time.time() > 3500
    assert client.get("/api/tasks", headers=auth).status_code == 200
    refused = client.get("/api/tasks", headers=auth)
    assert refused.status_code == 429
    assert refused.get_json() == {"detail": "Rate limit exceeded: 3 per 1 minute; 2 per 1 hour per user"}
    assert rate_headers(refused)["X-RateLimit-Limit"] == "2"
    assert 3500 < int(refused.headers["Retry-After"]) <= 3601


def test_memory_windows_start_with_their_first_count_and_are_dropped_once_ended():
    storage = ratelimit.MemoryWindows()
    now = [1000.0]
    storage.clock = lambda: now[0]
    assert (storage.incr("a", 1), storage.incr("b", 1, amount=5)) == (1, 5)
    now[0] = 1000.5
    assert (storage.incr("a", 1), storage.get("a"), storage.get_expiry("a")) == (2, 2, 1001.0)
    now[0] = 1001.0
    assert (storage.get("a"), storage.incr("a", 1), storage.get_expiry("a")) == (0, 1, 1002.0)  # a new window
    assert sorted(storage.windows) == ["a", "b"]
    now[0] = 1000.0 + ratelimit.SWEEP_SECONDS
    storage.incr("c", 1)
    assert sorted(storage.windows) == ["c"]


@pytest.mark.redis
def test_a_failing_redis_is_tried_again_after_1_2_4_up_to_32_seconds(private_redis):
    """Redis answering errors (out of memory here) counts as down, like one that does not answer."""
    url, _process = private_redis
    store = redis.Redis.from_url(url)
    counters = ratelimit.Counters(url)
    now = [0.0]
    counters.clock = lambda: now[0]
    (item,) = ratelimit.Limit("RATELIMIT_PER_IP", "100 per hour", "ip", "per client address").items
    in_redis, in_memory = "LIMITS:" + item.key_for("k"), item.key_for("k")

    def count_at(moment):
        now[0] = moment
        runs = script_runs(url)
        assert counters.hit(item, "k") is True
        return script_runs(url) > runs

    assert count_at(0.0)
    store.config_set("maxmemory", 1)
    tried = [
        moment
        for moment in [10, 10.5, 10.99, 11, 12.9, 13, 16.9, 17, 25, 41, 72.9, 73, 104.9, 105, 137]
        if count_at(moment)
    ]
    assert tried == [10, 11, 13, 17, 25, 41, 73, 105, 137]
    assert counters.memory.storage.get(in_memory) == 15  # every count was made, in memory when Redis failed
    store.config_set("maxmemory", 0)
    assert not count_at(150.0)  # not yet: memory
    assert count_at(169.0)  # back in Redis, where it left off
    assert (int(store.get(in_redis)), counters.memory.storage.get(in_memory)) == (2, 16)
    store.config_set("maxmemory", 1)
    assert count_at(200.0)  # failed: memory
    store.config_set("maxmemory", 0)
    assert not count_at(200.9)
    assert count_at(201.0)  # after 1 s again
    assert (int(store.get(in_redis)), counters.memory.storage.get(in_memory)) == (3, 18)


# -- Each user's budget of response bytes ---------------------------------------------


def create_large_tasks(client, headers, count=10, description_length=8000):
    """`count` tasks whose list comes to `count` times `description_length` bytes and a little more."""
    for index in range(count):
        response = client.post(
            "/api/tasks", headers=headers, json={"title": f"large {index}", "description": "d" * description_length}
        )
        assert response.status_code == 200


@sqlite_only
def test_a_users_responses_are_charged_to_their_budget_by_size_and_a_spent_budget_is_429(limited, auth, other_auth):
    """Each list of 10 tasks of 8,000 characters is about 82 KiB: the third takes the user over 200 KiB."""
    app = limited(RATELIMIT_KIB_PER_USER="200 per minute")
    client = app.test_client()
    create_large_tasks(client, auth)
    create_large_tasks(client, other_auth)
    task_id = client.get("/api/tasks", headers=auth, query_string={"limit": 1}).get_json()["data"][0]["id"]
    for _ in range(50):  # responses under 64 KiB are not charged
        assert client.get(f"/api/tasks/{task_id}", headers=auth).status_code == 200
    lists = [client.get("/api/tasks", headers=auth) for _ in range(3)]
    assert [(response.status_code, len(response.get_json()["data"])) for response in lists] == [(200, 10)] * 3
    assert 80 * 1024 < len(lists[0].data) < 100 * 1024
    for path in ("/api/tasks", f"/api/tasks/{task_id}", "/api/settings"):
        refused = client.get(path, headers=auth)
        assert refused.status_code == 429
        assert refused.get_json() == {"detail": "Rate limit exceeded: 200 KiB of responses per 1 minute per user"}
        assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == ("200", "0")
        assert 1 <= int(refused.headers["Retry-After"]) <= 61
    # The budget is the user's: another user, on the same address, is served.
    assert client.get("/api/tasks", headers=other_auth).status_code == 200
    # A refused request changes nothing.
    assert client.post("/api/tasks", headers=auth, json={"title": "refused"}).status_code == 429
    assert client.get("/api/tasks", headers=other_auth).get_json()["data"][0]["title"] == "large 9"


@sqlite_only
@pytest.mark.redis
def test_workers_on_one_redis_share_a_users_budget_and_each_refuses_once_it_sees_it_spent(limited, auth, redis_prefix):
    settings = {
        "REDIS_URL": REDIS_URL,
        "RATELIMIT_KEY_PREFIX": redis_prefix,
        "RATELIMIT_KIB_PER_USER": "200 per minute",
    }
    first, second = limited(**settings).test_client(), limited(**settings).test_client()
    create_large_tasks(first, auth)
    statuses = [client.get("/api/tasks", headers=auth).status_code for client in (first, second, first, first)]
    assert statuses == [200, 200, 200, 429]  # the third list, from the first worker, spent it
    # The second worker learns it from its own next charge: one more list, then refusals.
    assert [second.get("/api/tasks", headers=auth).status_code for _ in range(2)] == [200, 429]
    keys = [key for key in redis_keys(redis_prefix) if "/kib/" in key]
    assert len(keys) == 1 and keys[0].endswith("/kib/200/1/minute")


@sqlite_only
def test_the_budget_holds_in_memory_when_redis_is_unreachable(limited, auth):
    app = limited(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0", RATELIMIT_KIB_PER_USER="100 per minute")
    client = app.test_client()
    create_large_tasks(client, auth)
    assert [client.get("/api/tasks", headers=auth).status_code for _ in range(3)] == [200, 200, 429]
