"""Instructions per request of todo-api and of the ceiling app, counted by valgrind: the same on every run.

Requests/s on a shared machine drift by a fifth from minute to minute; the
instructions a request executes do not. On a throwaway Postgres database (one
user, one session, 20 tasks), each scenario is sent in-process (Flask's test
client, the next frontend's headers and bodies as `wrk.lua` sends them) to
todo-api (every feature on, rate limits counted in memory) and to
`ceiling_app.py`, each in a child process run twice under `valgrind
--tool=callgrind`: after 20 warm-up requests, once with no more requests and
once with `--requests` more. The difference divided by `--requests` is one
request's instructions in the Python process (Postgres's work is not counted).
A scenario takes about a minute per server. `create` runs last: the tasks it
adds would lengthen the list.

Usage:
    .venv/bin/python bench/instructions.py [--scenarios list,get,update,toggle,create] [--requests 300]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ("list", "get", "update", "toggle", "create")
WARMUPS = 20
CREATE = (
    b'{"title":"Load task 1-1","description":"","priority":"high","due_date":null,"is_recurring":false,'
    b'"recurrence_pattern":null,"tags":[]}'
)
FORM = (
    b'{"title":"Renamed 1-2","description":"","priority":"low","due_date":null,"is_recurring":false,'
    b'"recurrence_pattern":null}'
)
BENCH_LIMIT = "1000000000 per minute"


def child(server, scenario, count, setup):
    """Send WARMUPS + count requests of one scenario to one server, in this process."""
    sys.path.insert(0, REPO)
    if server == "todo-api":
        from todo_api import create_app

        app = create_app(
            {
                "DATABASE_URL": setup["url"],
                "SECRET_KEY": "bench",
                "LOG_LEVEL": "WARNING",
                "RATELIMIT_PER_USER": BENCH_LIMIT,
                "RATELIMIT_PER_IP": BENCH_LIMIT,
                "RATELIMIT_CONCURRENT_PER_USER": 1000,
            }
        )
    else:
        from bench.ceiling_app import create_app

        app = create_app(setup["url"])
    client, ids = app.test_client(), setup["ids"]
    headers = {"Authorization": f"Bearer {setup['token']}", "Content-Type": "application/json"}
    send = {
        "list": lambda: client.get("/api/tasks", headers=headers),
        "get": lambda: client.get(f"/api/tasks/{ids[0]}", headers=headers),
        "update": lambda: client.put(f"/api/tasks/{ids[1]}", headers=headers, data=FORM),
        "toggle": lambda: client.patch(f"/api/tasks/{ids[2]}/complete", headers=headers),
        "create": lambda: client.post("/api/tasks", headers=headers, data=CREATE),
    }[scenario]
    for _ in range(WARMUPS):
        assert send().status_code == 200, scenario
    for _ in range(count):
        send()


def instructions(server, scenario, count, setup_path, work):
    """The instructions callgrind counted in a child sending WARMUPS + count requests."""
    out = os.path.join(work, f"callgrind.{server}.{scenario}.{count}")
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
    command += ["--child", server, scenario, str(count), setup_path]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"{server} {scenario} failed:\n{done.stderr[-3000:]}")
    return int(match.group(1))


def prepare(admin_url, name, work):
    """A throwaway database with one user, one session and 20 tasks; its setup saved for the children."""
    sys.path.insert(0, REPO)
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from todo_api import create_app
    from todo_api.cli import create_user_session
    from todo_api.db.connections import get_engine
    from todo_api.db.engine import normalize_url

    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
        connection.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "LOG_LEVEL": "WARNING"})
    assert app.test_cli_runner().invoke(args=["init-db", "--auth-tables"]).exit_code == 0
    with get_engine(app).begin() as connection:
        token = create_user_session(connection, app.config, "bench@example.com")
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    for number in range(20):
        body = {"title": f"Load task {number}", "description": "", "priority": "high", "tags": []}
        assert client.post("/api/tasks", headers=headers, json=body).status_code == 200
    ids = [task["id"] for task in client.get("/api/tasks", headers=headers).get_json()["data"]]
    get_engine(app).dispose()
    path = os.path.join(work, "setup.json")
    with open(path, "w") as file:
        json.dump({"url": url, "token": token, "ids": ids}, file)
    return path


def drop(admin_url, name):
    from sqlalchemy import create_engine, text

    from todo_api.db.engine import normalize_url

    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--child", nargs=4, metavar=("SERVER", "SCENARIO", "COUNT", "SETUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        server, scenario, count, setup_path = args.child
        with open(setup_path) as file:
            return child(server, scenario, int(count), json.load(file))
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    scenarios = [name for name in SCENARIOS if name in args.scenarios.split(",")]
    name = f"todo_api_instructions_{uuid.uuid4().hex[:8]}"
    work = os.path.join("/tmp", name)
    os.makedirs(work)
    rows = []
    try:
        setup_path = prepare(args.admin_url, name, work)
        for scenario in scenarios:
            counts = {}
            for server in ("todo-api", "ceiling"):
                base = instructions(server, scenario, 0, setup_path, work)
                loaded = instructions(server, scenario, args.requests, setup_path, work)
                counts[server] = (loaded - base) / args.requests
            rows.append((scenario, counts["todo-api"], counts["ceiling"]))
            print(f"{scenario}: todo-api {counts['todo-api']:,.0f}, ceiling {counts['ceiling']:,.0f}", flush=True)
    finally:
        drop(args.admin_url, name)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.requests} requests after {WARMUPS} warm-ups, instructions per request in the Python process")
    print("| scenario | todo-api | ceiling app | todo-api / ceiling |")
    print("|---|---:|---:|---:|")
    for scenario, service, ceiling in rows:
        print(f"| `{scenario}` | {service:,.0f} | {ceiling:,.0f} | {service / ceiling:.2f} |")


if __name__ == "__main__":
    main()
