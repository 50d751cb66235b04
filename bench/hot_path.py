"""The cost of the hot routes in-process, this checkout against another (`--baseline`), alternating.

A throwaway database (created, migrated, dropped at the end, `synchronous_commit = off`) holds one user, one
session and 20 tasks. Each round runs every checkout once, in turn, in a child process of its own (so two
versions of `todo_api` never share a process): the child builds the app on that database with rate limits off,
sends each scenario `--requests` times after warm-ups through the Flask test client, and reports wall-clock and
CPU microseconds per request. The medians over `--rounds` are printed per scenario and checkout. Nothing of
gunicorn or the network is timed. `--driver` also times the list and toggle statements alone, through
SQLAlchemy and on the psycopg2 cursor with the statement compiled once, and a task GET's statement (with its
session check) through SQLAlchemy's execution and through the service's fast path, `db.driver.run_on_driver`.

Usage:
    git worktree add /tmp/baseline main
    .venv/bin/python bench/hot_path.py --baseline /tmp/baseline [--requests 2000] [--rounds 5] [--driver]
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUPS = 50
TASKS = 20
FORM = {"title": "Edited", "description": "", "priority": "low", "due_date": None, "recurrence_pattern": None}


def scenarios(client, headers, task_id):
    return {
        "list": lambda: client.get("/api/tasks", headers=headers),
        "get": lambda: client.get(f"/api/tasks/{task_id}", headers=headers),
        "create": lambda: client.post("/api/tasks", headers=headers, json={"title": "t", "priority": "high"}),
        "update": lambda: client.put(f"/api/tasks/{task_id}", headers=headers, json=FORM),
        "toggle": lambda: client.patch(f"/api/tasks/{task_id}/complete", headers=headers),
    }


def time_calls(call, count):
    """(wall-clock, CPU) microseconds per call."""
    for _ in range(WARMUPS):
        call()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        call()
    return (time.perf_counter() - wall) / count * 1e6, (time.process_time() - cpu) / count * 1e6


def child(url, token, count, driver):
    """One checkout's figures, as JSON on stdout (run with that checkout first on sys.path)."""
    from sqlalchemy import delete

    from todo_api import create_app
    from todo_api.db.connections import get_engine
    from todo_api.db.tables import task

    app = create_app({"TESTING": True, "DATABASE_URL": url, "RATELIMIT_ENABLED": False, "SECRET_KEY": "bench"})
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    ids = [row["id"] for row in client.get("/api/tasks", headers=headers).get_json()["data"]]
    results = {}
    for label, send in scenarios(client, headers, ids[-1]).items():
        assert send().status_code == 200, label
        results[label] = time_calls(send, count)
    with get_engine(app).begin() as connection:  # the creates go, so every round lists the same tasks
        connection.execute(delete(task).where(task.c.id.not_in(ids)))
    if driver:
        results.update(driver_overhead(app, token, ids[-1], count))
    get_engine(app).dispose()
    print(json.dumps(results))


def session_guard(app):
    """The session check the task statements carry, wherever this checkout keeps it; None before there was one."""
    sessions = app.extensions.get("todo_api.auth")
    if sessions is not None:
        return sessions.guard
    return getattr(app.extensions.get("todo_api"), "session_guard", None)


def driver_overhead(app, token, task_id, count):
    """The list and toggle statements alone: SQLAlchemy's execute and rows, against psycopg2's cursor; and a task
    GET's statement through SQLAlchemy and through `run_on_driver`."""
    from todo_api.db.connections import get_engine
    from todo_api.tasks import listing
    from todo_api.tasks import store as task_store
    from todo_api.tasks.schemas import list_query_schema

    digest = hashlib.sha256(token.encode()).digest()  # the session's token digest (db/token_digest.py)
    results = {}
    with app.app_context(), get_engine(app).connect() as db:
        user_id = db.exec_driver_sql("SELECT user_id FROM task LIMIT 1").scalar()
        query = list_query_schema.load({})
        cursors = listing.Cursors("bench")
        guard = session_guard(app)
        params = {"owner_id": user_id, "digest": digest} if guard is not None else {}

        def statement():
            built = listing.list_statement(user_id, query, "postgresql", cursors)
            return built.where(guard) if guard is not None else built

        prebuilt = statement()
        compiled = prebuilt.compile(dialect=db.dialect)
        sql, bound = str(compiled), {**compiled.params, **params}
        toggle = task_store._TOGGLE_UNLESS_RECURRING
        toggle_compiled = toggle.compile(dialect=db.dialect)
        dbapi = db.connection.dbapi_connection
        results["list statement, built per call"] = time_calls(lambda: db.execute(statement(), params).all(), count)
        results["list statement, prebuilt"] = time_calls(lambda: db.execute(prebuilt, params).all(), count)

        def raw_list():
            with dbapi.cursor() as cursor:
                cursor.execute(sql, bound)
                return cursor.fetchall()

        results["list statement, psycopg2 cursor"] = time_calls(raw_list, count)
        toggle_params = {"task_key": task_id, "owner_id": user_id, "now": task_store.utcnow()}
        results["toggle statement, SQLAlchemy"] = time_calls(lambda: db.execute(toggle, toggle_params).first(), count)
        toggle_sql = str(toggle_compiled)

        def raw_toggle():
            with dbapi.cursor() as cursor:
                cursor.execute(toggle_sql, toggle_params)
                return cursor.fetchone()

        results["toggle statement, psycopg2 cursor"] = time_calls(raw_toggle, count)
        results.update(get_statement_both_ways(db, guard, {**params, "task_key": task_id}, count))
    return results


def get_statement_both_ways(db, guard, params, count):
    """A task GET's statement, as the route sends it, through SQLAlchemy's execution and through `run_on_driver`
    (nothing in a checkout from before that module)."""
    try:
        from todo_api.db.driver import run_on_driver
    except ImportError:
        return {}
    from todo_api.tasks import store

    statement = store._SELECT.where(guard)
    assert [tuple(row) for row in run_on_driver(db, statement, params)] == [
        tuple(row) for row in db.execute(statement, params).all()
    ]
    return {
        "get statement, SQLAlchemy": time_calls(lambda: db.execute(statement, params).all(), count),
        "get statement, run_on_driver": time_calls(lambda: run_on_driver(db, statement, params), count),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="another checkout of todo-api, e.g. a worktree of main")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--driver", action="store_true", help="also time the list and toggle statements alone")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--child", nargs=2, metavar=("URL", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.requests, args.driver)
    if not args.baseline:
        parser.error("--baseline is required")

    sys.path.insert(0, HERE)
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from todo_api import create_app
    from todo_api.cli import create_user_session
    from todo_api.db.connections import get_engine
    from todo_api.db.engine import normalize_url

    admin = create_engine(normalize_url(args.admin_url), isolation_level="AUTOCOMMIT")
    name = f"todo_api_hot_path_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
        connection.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    checkouts = {"baseline": os.path.abspath(args.baseline), "this": HERE}
    results = {label: [] for label in checkouts}
    try:
        url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
        app = create_app({"TESTING": True, "DATABASE_URL": url, "RATELIMIT_ENABLED": False, "SECRET_KEY": "bench"})
        assert app.test_cli_runner().invoke(args=["init-db", "--auth-tables"]).exit_code == 0
        with get_engine(app).begin() as connection:
            token = create_user_session(connection, app.config, "bench@example.com")
        client = app.test_client()
        for number in range(TASKS):
            body = {"title": f"Task {number}", "priority": "high", "tags": ["a", "b"]}
            assert client.post("/api/tasks", headers={"Authorization": f"Bearer {token}"}, json=body).status_code == 200
        get_engine(app).dispose()
        for _ in range(args.rounds):
            for label, path in checkouts.items():
                command = [sys.executable, os.path.abspath(__file__), "--child", url, token]
                command += ["--requests", str(args.requests)] + (["--driver"] if args.driver else [])
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))}
                output = subprocess.run(command, env=env, cwd=path, check=True, capture_output=True, text=True)
                results[label].append(json.loads(output.stdout.strip().splitlines()[-1]))
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
    print(f"{args.requests} requests x {args.rounds} rounds, median per request (wall / CPU, microseconds)")
    print("| scenario | " + " | ".join(checkouts) + " |")
    print("|---|" + "---:|" * len(checkouts))
    for scenario in results["this"][0]:
        cells = []
        for label in checkouts:
            rounds = [round_[scenario] for round_ in results[label] if scenario in round_]
            if not rounds:
                cells.append("-")
                continue
            wall = statistics.median(value for value, _ in rounds)
            cpu = statistics.median(value for _, value in rounds)
            cells.append(f"{wall:.0f} / {cpu:.0f}")
        print(f"| {scenario} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
