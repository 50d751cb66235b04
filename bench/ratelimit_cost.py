"""What rate limiting costs per request, in CPU time of the serving process.

The real app runs in-process (Flask's test client) on a throwaway SQLite file,
three times: rate limits off (`RATELIMIT_ENABLED=false`), on with counters in
memory, and on with counters in Redis (`--redis-url`, under a key prefix of its
own, deleted at the end). Each is sent the same requests in interleaved
rounds: `GET /` (counted per address) and `GET /api/settings` (per address
and per user, and the bound on requests in progress). The limits are set high,
so every request is counted and none is refused. It prints the median CPU time
per request of each setup and its difference from the run without limits.

Usage:
    .venv/bin/python bench/ratelimit_cost.py [--requests 20000] [--rounds 10]
        [--redis-url redis://127.0.0.1:6379/0]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis  # noqa: E402

from todo_api import create_app  # noqa: E402

HIGH = "100000000 per minute"
PATHS = {"per address": "/", "per address and user": "/api/settings"}


def build(database_url, **overrides):
    settings = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "DATABASE_MIGRATION_URL": None,
        "SECRET_KEY": "bench-secret",
        "RATELIMIT_PER_USER": HIGH,
        "RATELIMIT_PER_IP": HIGH,
        "REDIS_URL": None,
        **overrides,
    }
    return create_app(settings)


def cpu_per_request(client, path, headers, count):
    started = time.process_time()
    for _ in range(count):
        response = client.get(path, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.get_data(as_text=True)}")
    return (time.process_time() - started) / count * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per setup and path, in all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    prefix = f"todo-api-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as directory:
        database_url = f"sqlite:///{directory}/bench.sqlite"
        setup = build(database_url, RATELIMIT_ENABLED=False)
        runner = setup.test_cli_runner()
        runner.invoke(args=["init-db"], catch_exceptions=False)
        token = runner.invoke(args=["create-session", "bench@example.com"], catch_exceptions=False).output.strip()
        headers = {"Authorization": f"Bearer {token.splitlines()[-1]}"}
        apps = {
            "off": setup,
            "memory": build(database_url),
            "redis": build(database_url, REDIS_URL=args.redis_url, RATELIMIT_KEY_PREFIX=prefix),
        }
        clients = {name: app.test_client() for name, app in apps.items()}
        per_round = max(1, args.requests // args.rounds)
        samples = {(name, label): [] for name in clients for label in PATHS}
        for client in clients.values():  # warm up: connections, compiled statements, the Redis script
            for path in PATHS.values():
                cpu_per_request(client, path, headers, 200)
        names = list(clients)
        for round_number in range(args.rounds):
            order = names[round_number % len(names) :] + names[: round_number % len(names)]
            for name in order:
                for label, path in PATHS.items():
                    samples[name, label].append(cpu_per_request(clients[name], path, headers, per_round))
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=f"*{prefix}*"):
            client.delete(key)

    print(f"{args.requests} requests per setup and path, {args.rounds} rounds; median CPU µs per request")
    print("| path | off | memory | redis | memory - off | redis - off |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, path in PATHS.items():
        off, memory, in_redis = (statistics.median(samples[name, label]) for name in ("off", "memory", "redis"))
        print(
            f"| `GET {path}` ({label}) | {off:.0f} | {memory:.0f} | {in_redis:.0f} | "
            f"{memory - off:+.0f} | {in_redis - off:+.0f} |"
        )


if __name__ == "__main__":
    main()
