"""What syncing and batching cost: `GET /api/tasks/changes` on a large list, and a batch against single creates.

On a throwaway Postgres database (created, migrated, dropped at the end), through the real Flask app in-process:

1. One user with --tasks tasks (100,000 by default; other users hold as many again, all written through the
   task table, so the change log holds a row for each): the first sync from nothing (every page of 1,000),
   then 10 changes (edits, a completion, a deletion), then `GET /api/tasks/changes?since=<token>` repeated:
   what a client polling after a few changes pays.
2. 100 creates as one `POST /api/tasks/batch` against 100 `POST /api/tasks`, alternated, each round on an
   emptied list.

Usage:
    .venv/bin/python bench/sync.py [--tasks 100000] [--repeat 50] [--rounds 10]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import os
import statistics
import sys
import time

from sqlalchemy import text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # the tests' support: a throwaway database

from support import throwaway_database  # noqa: E402
from todo_api import create_app  # noqa: E402
from todo_api.cli import create_user_session  # noqa: E402
from todo_api.db.connections import get_engine  # noqa: E402
from todo_api.db.migrate import create_schema  # noqa: E402

FILL = text(
    """
    INSERT INTO task (user_id, title, description, completed, priority, category, tags, created_at, updated_at,
                      reminder_sent, due_all_day)
    SELECT CASE WHEN :others THEN 'other-user-' || (g % 19) ELSE :user_id END, 'Task ' || g, 'About task ' || g,
           g % 3 = 0, 'medium', NULL, '[]', timestamp '2026-01-01' + g * interval '1 minute',
           timestamp '2026-01-01' + g * interval '1 minute', false, false
    FROM generate_series(1, :n) AS g
    """
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="the user's tasks (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=50, help="timed changes requests (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=10, help="batch / single rounds (default: %(default)s)")
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database used only to create and drop the throwaway one",
    )
    return parser.parse_args()


def ms_since(start):
    return (time.perf_counter() - start) * 1000


def check(response):
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True)[:300])
    return response.get_json()


def first_sync(client, headers):
    """Every page from nothing: (pages, tasks, ms), and the token to continue from."""
    start, pages, tasks, token = time.perf_counter(), 0, 0, None
    while True:
        query = {"since": token} if token else {}
        body = check(client.get("/api/tasks/changes", headers=headers, query_string=query))
        pages, tasks, token = pages + 1, tasks + len(body["data"]), body["sync_token"]
        if not body["has_more"]:
            return pages, tasks, ms_since(start), token


def ten_changes(client, headers, ids):
    for task_id in ids[:7]:
        check(client.put(f"/api/tasks/{task_id}", headers=headers, json={"title": f"Edited {task_id}"}))
    check(client.patch(f"/api/tasks/{ids[7]}/complete", headers=headers, json={"completed": True}))
    check(client.delete(f"/api/tasks/{ids[8]}", headers=headers))
    check(client.post("/api/tasks", headers=headers, json={"title": "A new one"}))


def changes_since(client, headers, token, repeat):
    samples = []
    for _ in range(5 + repeat):
        start = time.perf_counter()
        body = check(client.get("/api/tasks/changes", headers=headers, query_string={"since": token}))
        samples.append(ms_since(start))
    return samples[5:], len(body["data"]), len(body["deleted"])


def batch_against_singles(client, headers, engine, user_id, rounds):
    creates = [{"title": f"Imported {n}", "priority": "high", "tags": ["import"]} for n in range(100)]
    operations = {"operations": [{"op": "create", "fields": fields} for fields in creates]}
    batched, single = [], []
    for round_ in range(rounds):
        for kind in ("batch", "single") if round_ % 2 == 0 else ("single", "batch"):
            with engine.begin() as connection:
                connection.execute(text("DELETE FROM task WHERE user_id = :u"), {"u": user_id})
            start = time.perf_counter()
            if kind == "batch":
                assert len(check(client.post("/api/tasks/batch", headers=headers, json=operations))["data"]) == 100
                batched.append(ms_since(start))
            else:
                for fields in creates:
                    check(client.post("/api/tasks", headers=headers, json=fields))
                single.append(ms_since(start))
    return batched, single


def run(url, args):
    app = create_app({"DATABASE_URL": url, "LOG_LEVEL": "WARNING", "SECRET_KEY": "sync-bench-0123456789abcdef"})
    app.config["RATELIMIT_ENABLED"] = False
    engine = get_engine(app)
    try:
        create_schema(engine, app.config, with_auth_tables=True)
        with engine.begin() as connection:
            token = create_user_session(connection, app.config, "sync@example.com")
            user_id = connection.execute(text('SELECT "userId" FROM "session" WHERE token = :t'), {"t": token}).scalar()
            start = time.perf_counter()
            connection.execution_options(statement_timeout_ms=0)  # a bulk load, not a request
            connection.execute(FILL, {"n": args.tasks, "others": False, "user_id": user_id})
            connection.execute(FILL, {"n": args.tasks, "others": True, "user_id": user_id})
            print(f"filled {args.tasks:,} tasks (+{args.tasks:,} of other users) in {ms_since(start) / 1000:.1f} s")
            ids = connection.execute(
                text("SELECT id FROM task WHERE user_id = :u ORDER BY id LIMIT 9"), {"u": user_id}
            ).scalars()
            ids = list(ids)
        with engine.connect() as connection, connection.connection.dbapi_connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        headers = {"Authorization": f"Bearer {token}"}
        client = app.test_client()
        pages, tasks, took, sync_token = first_sync(client, headers)
        print(
            f"first sync from nothing: {tasks:,} tasks in {pages} pages, {took:.0f} ms ({took / pages:.1f} ms a page)"
        )
        ten_changes(client, headers, ids)
        samples, changed, deleted = changes_since(client, headers, sync_token, args.repeat)
        print(
            f"changes since a recent token ({changed} changed, {deleted} deleted, of {args.tasks:,}): "
            f"median {statistics.median(samples):.2f} ms, p95 {statistics.quantiles(samples, n=20)[-1]:.2f} ms "
            f"over {args.repeat} requests"
        )
        batched, single = batch_against_singles(client, headers, engine, user_id, args.rounds)
        b, s = statistics.median(batched), statistics.median(single)
        print(
            f"100 creates: one batch median {b:.1f} ms, 100 single creates median {s:.1f} ms "
            f"({s / b:.1f}x), over {args.rounds} alternated rounds"
        )
    finally:
        engine.dispose()


def main():
    args = parse_args()
    with throwaway_database(args.admin_url, "todo_api_sync") as url:
        run(url, args)


if __name__ == "__main__":
    main()
