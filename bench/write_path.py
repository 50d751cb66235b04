"""The cost of one write in-process: PUT and toggle through the Flask test client on Postgres.

A throwaway database (created, migrated, dropped at the end) holds one user and
one task; each scenario sends that task the same request `--requests` times
after a few warm-ups, with rate limits off, and prints the median of `--rounds`
rounds: wall-clock and this process's CPU time, in microseconds per request. The
database runs with `synchronous_commit = off`, so the disk's flush does not
drown the service's own cost; nothing of gunicorn or the network is timed.

Usage:
    .venv/bin/python bench/write_path.py [--requests 2000] [--rounds 5]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # the tests' support: a throwaway database

from support import throwaway_database  # noqa: E402
from todo_api import create_app  # noqa: E402
from todo_api.cli import create_user_session  # noqa: E402
from todo_api.db.connections import get_engine  # noqa: E402

WARMUPS = 50
EDIT_FORM = {"title": "Edited", "description": "d", "priority": "high", "category": "work", "tags": ["a", "b"]}


def scenarios(client, headers, task_id):
    return {
        "put": lambda: client.put(f"/api/tasks/{task_id}", headers=headers, json=EDIT_FORM),
        "toggle": lambda: client.patch(f"/api/tasks/{task_id}/complete", headers=headers),
    }


def time_requests(send, count):
    """(wall-clock, CPU) microseconds per request."""
    for _ in range(WARMUPS):
        assert send().status_code == 200
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        send()
    return (time.perf_counter() - wall) / count * 1e6, (time.process_time() - cpu) / count * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    with throwaway_database(args.admin_url, "todo_api_write_path", "synchronous_commit = off") as url:
        app = create_app({"TESTING": True, "DATABASE_URL": url, "RATELIMIT_ENABLED": False, "SECRET_KEY": "bench"})
        assert app.test_cli_runner().invoke(args=["init-db", "--auth-tables"]).exit_code == 0
        with get_engine(app).begin() as connection:
            token = create_user_session(connection, app.config, "bench@example.com")
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        task_id = client.post("/api/tasks", headers=headers, json={"title": "t"}).get_json()["data"]["id"]
        results = {label: [] for label in scenarios(client, headers, task_id)}
        for _ in range(args.rounds):  # interleaved, so a passing disturbance hits both alike
            for label, send in scenarios(client, headers, task_id).items():
                results[label].append(time_requests(send, args.requests))
        get_engine(app).dispose()
    print(f"{args.requests} requests x {args.rounds} rounds, median per request")
    for label, rounds in results.items():
        wall = statistics.median(value for value, _ in rounds)
        cpu = statistics.median(value for _, value in rounds)
        print(f"{label}: {wall:.0f} us wall, {cpu:.0f} us CPU")


if __name__ == "__main__":
    main()
