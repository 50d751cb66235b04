"""Throughput and latency of the service under gunicorn, as it runs in production.

One command:

    make bench ARGS="..."   or   .venv/bin/python bench/run.py [--users 100] [--tasks-per-user 20]
        [--connections 16] [--duration 10] [--threads 2]
        [--scenarios health,list,get,create,update,toggle,mix]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

It creates a throwaway Postgres database (dropped at the end, also on failure
or Ctrl-C), builds the schema with `flask --app todo_api init-db
--auth-tables`, inserts the users and their Better Auth sessions by SQL,
starts the service exactly as the Procfile does (`gunicorn --config
gunicorn.conf.py wsgi:app`, access log off; WEB_CONCURRENCY and
GUNICORN_THREADS are passed through; the rate limits are raised so that
the load, all from one address, is counted but never refused), creates every user's tasks through the
API, then loads each scenario with wrk (bench/wrk.lua) for --duration
seconds, spreading the requests across all users' sessions:

    health  GET /health                 list    GET /api/tasks
    get     GET /api/tasks/<id>         create  POST /api/tasks
    update  PUT /api/tasks/<id>         toggle  PATCH /api/tasks/<id>/complete
    mix     70% list, 10% create, 10% toggle, 10% update

Tasks created by a scenario are deleted after it and the table is vacuumed
after every scenario that writes, so every scenario sees the same lists. For
each scenario it prints requests/s, p50 and p99 latency, the non-2xx responses
and socket errors, and the reference backend's figures where known. Then:
the database ceiling of the list scenario (pgbench running the SQL the
service sends for one list request, with as many connections) and the ratio
of the two; and the peak resident memory (VmHWM) of each gunicorn worker. Exits with status 1 if any request failed.

Needs wrk (installed with apt-get when missing and run as root) and pgbench.
"""

import argparse
import glob
import http.client
import json
import os
import random
import re
import runpy
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.extras
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(os.path.abspath(sys.executable))
WRK_SCRIPT = os.path.join(REPO, "bench", "wrk.lua")
sys.path.insert(0, REPO)

SCENARIOS = ("health", "list", "get", "create", "update", "toggle", "mix")
CREATING = {"create", "mix"}
WRITING = {"create", "update", "toggle", "mix"}
# The reference backend's figures, measured on this machine type with the
# default size (req/s, p50 ms, p99 ms; None where not measured).
REFERENCE = {
    "list": (250, 61, 167),
    "create": (221, None, None),
    "toggle": (197, None, None),
    "mix": (167, None, None),
}
ALPHANUMERIC = string.ascii_letters + string.digits
FIRST_USER_NUMBER = 1_000_000_000  # session tokens end in a 10-digit user number
WORDS = (
    "review",
    "report",
    "call",
    "plumber",
    "write",
    "slides",
    "pay",
    "invoice",
    "book",
    "flight",
    "renew",
    "passport",
    "plan",
    "roadmap",
    "fix",
    "bicycle",
    "order",
    "groceries",
    "clean",
    "garage",
)
PRIORITIES = ("low", "medium", "high")
TAGS = ("work", "home", "urgent", "weekend", "q3", "errands")


class Stop(Exception):
    """SIGTERM: unwind like Ctrl-C, so the database is dropped and processes are stopped."""


def stop(_signal, _frame):
    raise Stop()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="users, each with a session (default: %(default)s)")
    parser.add_argument("--tasks-per-user", type=int, default=20, help="default: %(default)s")
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="wrk connections, and pgbench clients for the ceiling (default: %(default)s)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk and pgbench threads (default: %(default)s)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset, run in this order (default: all)"
    )
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database used only to create and drop the throwaway one (default: %(default)s)",
    )
    args = parser.parse_args()
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or not args.scenarios:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    if min(args.users, args.tasks_per_user, args.duration, args.threads) < 1:
        parser.error("--users, --tasks-per-user, --duration and --threads must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if args.users > 9_000_000_000:
        parser.error("--users is at most 9,000,000,000")
    return args


# -- Tools ------------------------------------------------------------------


def find_wrk():
    if shutil.which("wrk"):
        return shutil.which("wrk")
    if os.geteuid() != 0:
        sys.exit("wrk is needed: apt-get install -y wrk")
    print("installing wrk ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, check=True)
    return shutil.which("wrk")


def find_pgbench():
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return shutil.which("pgbench") or (candidates[-1] if candidates else None)


def libpq_url(url, database=None):
    """The URL for libpq (psycopg2, pgbench), optionally for another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


# -- Database ---------------------------------------------------------------


def admin_execute(admin_url, sql):
    connection = psycopg2.connect(libpq_url(admin_url))
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


def random_id(length=32):
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def insert_users(database_url, count):
    """Users and live Better Auth sessions, by SQL; returns [(user_id, token)].

    A token is a random prefix (one per run) and a 10-digit user number: 32
    alphanumeric characters, like Better Auth's, that pgbench can compose.
    """
    prefix = random_id(22)
    users = [(random_id(), f"{prefix}{FIRST_USER_NUMBER + number}") for number in range(count)]
    connection = psycopg2.connect(database_url)
    try:
        with connection, connection.cursor() as cursor:
            psycopg2.extras.execute_values(
                cursor,
                'INSERT INTO "user" (id, name, email, "emailVerified", "createdAt", "updatedAt") VALUES %s',
                [(user_id, f"bench{n}", f"bench{n}@example.com", True) for n, (user_id, _) in enumerate(users)],
                template="(%s, %s, %s, %s, now(), now())",
            )
            psycopg2.extras.execute_values(
                cursor,
                'INSERT INTO "session" (id, "expiresAt", token, "createdAt", "updatedAt", "userId") VALUES %s',
                [(random_id(), token, user_id) for user_id, token in users],
                template="(%s, now() + interval '1 day', %s, now(), now(), %s)",
            )
    finally:
        connection.close()
    return users, prefix


def sql(database_url, *statements):
    connection = psycopg2.connect(database_url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchone() if cursor.description else None
    finally:
        connection.close()


# -- The service ------------------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# All load comes from 127.0.0.1, far over any real per-address limit: the limits are raised so
# every request is still counted (the limiter's cost is measured) but none is refused.
# RATELIMIT_* and REDIS_URL in the environment win, e.g. RATELIMIT_ENABLED=false to compare.
BENCH_RATE_LIMIT = "1000000000 per minute"


def service_environment(database_url, port):
    env = dict(os.environ)
    env.setdefault("RATELIMIT_PER_IP", BENCH_RATE_LIMIT)
    env.setdefault("RATELIMIT_PER_USER", BENCH_RATE_LIMIT)
    env.update(PORT=str(port), DATABASE_URL=database_url, GUNICORN_ACCESS_LOG="false")
    return env


def rate_limit_description(env):
    if env.get("RATELIMIT_ENABLED", "true").strip().lower() in ("0", "false", "no", "off"):
        return "off"
    storage = "Redis" if env.get("REDIS_URL", "").strip() else "in-memory"
    return f"per IP {env['RATELIMIT_PER_IP']}, per user {env['RATELIMIT_PER_USER']}, {storage} counters"


def gunicorn_settings(env):
    """Workers and threads as gunicorn.conf.py computes them from this environment."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        conf = runpy.run_path(os.path.join(REPO, "gunicorn.conf.py"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return conf["workers"], conf["threads"]


def start_gunicorn(env, log):
    return subprocess.Popen(
        [os.path.join(BIN, "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(base_url, process, log_path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no healthy answer from gunicorn within {timeout} s:\n{tail(log_path)}")


def stop_gunicorn(process, grace=30):
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tail(path, lines=30):
    with open(path, errors="replace") as file:
        return "".join(file.readlines()[-lines:])


def worker_pids(master_pid):
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master_pid:
            pids.append(int(stat.split("/")[2]))
    return sorted(pids)


def peak_memory_kb(pid):
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


# -- Tasks through the API --------------------------------------------------


def create_tasks(port, users, per_user, concurrency):
    """Create every user's tasks with POST /api/tasks; returns the task ids of each user."""
    local = threading.local()
    rng = random.Random()

    def post(job):
        index, number = job
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        title = f"{WORDS[rng.randrange(len(WORDS))].capitalize()} {WORDS[rng.randrange(len(WORDS))]} #{number}"
        body = {"title": title, "priority": PRIORITIES[number % 3], "tags": rng.sample(TAGS, number % 3)}
        local.connection.request(
            "POST",
            "/api/tasks",
            json.dumps(body),
            {
                "Authorization": f"Bearer {users[index][1]}",
                "Content-Type": "application/json",
            },
        )
        response = local.connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /api/tasks answered {response.status}: {answer[:300]!r}")
        return index, json.loads(answer)["data"]["id"]

    jobs = [(index, number) for number in range(per_user) for index in range(len(users))]
    tasks = [[] for _ in users]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for index, task_id in pool.map(post, jobs):
            tasks[index].append(task_id)
    return tasks


def write_users_lua(path, users, tasks):
    with open(path, "w") as file:
        file.write("return {\n")
        for (_, token), ids in zip(users, tasks, strict=True):
            file.write(f'  {{token = "{token}", tasks = {{{", ".join(map(str, ids))}}}}},\n')
        file.write("}\n")


# -- Load -------------------------------------------------------------------


def run_wrk(wrk, base_url, scenario, users_lua, args):
    command = [
        wrk,
        "--threads",
        str(args.threads),
        "--connections",
        str(args.connections),
        "--duration",
        f"{args.duration}s",
        "--timeout",
        "5s",
        "--script",
        WRK_SCRIPT,
        base_url,
        "--",
        scenario,
        users_lua,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
    match = re.search(r"^WRK_RESULT (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["socket_errors"] = sum(result[key] for key in ("connect", "read", "write", "timeout"))
    return result


def list_ceiling_script(token_prefix):
    """A pgbench script of the SQL the service sends for one `GET /api/tasks`.

    The statements are compiled from the service's own query builders, with
    literal values as psycopg2 sends them: the session lookup for a random
    user's token, then that user's list (pgbench's simple query protocol).
    The service sends the token's digest, computed in Python; pgbench cannot
    hash, so its lookup computes the same digest in SQL (a constant, folded
    once when the statement is planned).
    """
    from todo_api import create_app, listing, token_digest
    from todo_api.models import session_lookup
    from todo_api.schemas import list_query_schema

    app = create_app({"DATABASE_URL": "postgresql://localhost/unused", "LOG_LEVEL": "WARNING"})
    dialect = postgresql.psycopg2.dialect()
    token_mark, user_mark = "BenchTokenMark", "BenchUserMark"
    lookup = session_lookup(app.config).params(digest=token_mark.encode())
    page = listing.list_statement(
        user_mark, list_query_schema.load({}), "postgresql", app.extensions["todo_api.cursors"]
    )
    lookup_sql, page_sql = (
        str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})) for statement in (lookup, page)
    )
    if lookup_sql.count(token_mark) != 1 or page_sql.count(user_mark) != 1:
        raise RuntimeError("the list statements no longer take the token and user id where expected")
    user_column = app.config["SESSION_USER_ID_COLUMN"]  # \gset names the variable after the column
    if not re.fullmatch(r"[A-Za-z0-9_]+", user_column):
        raise RuntimeError(f"pgbench cannot name a variable after the column {user_column!r}")
    return "\n".join(
        [
            r"\set n :first + random(0, :users - 1)",
            lookup_sql.replace(f"'{token_mark}'", f"{token_digest.FUNCTION}('{token_prefix}:n')") + r" \gset",
            page_sql.replace(user_mark, ":" + user_column) + ";",
            "",
        ]
    )


def run_pgbench(pgbench, database_url, script_path, users, args):
    command = [
        pgbench,
        "--no-vacuum",
        "--protocol=simple",
        "--client",
        str(args.connections),
        "--jobs",
        str(args.threads),
        "--time",
        str(args.duration),
        "--define",
        f"first={FIRST_USER_NUMBER}",
        "--define",
        f"users={users}",
        "--file",
        script_path,
        database_url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
    tps = re.search(r"^tps = ([\d.]+)", done.stdout, re.MULTILINE)
    latency = re.search(r"^latency average = ([\d.]+) ms", done.stdout, re.MULTILINE)
    failed = re.search(r"^number of failed transactions: (\d+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not tps:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return float(tps.group(1)), float(latency.group(1)) if latency else None, int(failed.group(1)) if failed else 0


# -- Report -----------------------------------------------------------------


def ms(microseconds):
    return f"{microseconds / 1000:.1f}"


HEADER = (
    f"{'scenario':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'sock err':>9}"
    f" | {'ref req/s':>9}{'ref p50':>8}{'ref p99':>8}{'vs ref':>8}"
)


def scenario_line(name, result):
    line = (
        f"{name:<9}{result['rps']:>9.1f}{ms(result['p50_us']):>9}{ms(result['p99_us']):>9}"
        f"{result['non2xx']:>9}{result['socket_errors']:>9}"
    )
    reference = REFERENCE.get(name)
    if reference is None:
        return line + f" | {'-':>9}{'-':>8}{'-':>8}{'-':>8}"
    rps, p50, p99 = reference
    return line + (
        f" | {rps:>9}{p50 if p50 is not None else '-':>8}{p99 if p99 is not None else '-':>8}"
        f"{result['rps'] / rps:>7.2f}x"
    )


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, stop)
    wrk = find_wrk()
    pgbench = find_pgbench()
    name = f"todo_api_bench_{secrets.token_hex(6)}"
    database_url = libpq_url(args.admin_url, name)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="todo-api-bench-") as work:
        try:
            admin_execute(args.admin_url, f'CREATE DATABASE "{name}"')
        except psycopg2.Error as error:
            sys.exit(f"cannot create a database through {args.admin_url}: {error}")
        gunicorn = None
        try:
            env = service_environment(database_url, free_port())
            subprocess.run(
                [os.path.join(BIN, "flask"), "--app", "todo_api", "init-db", "--auth-tables"],
                cwd=REPO,
                env=env,
                check=True,
                capture_output=True,
            )
            users, token_prefix = insert_users(database_url, args.users)
            workers, threads = gunicorn_settings(env)
            print(
                f"todo-api bench: {args.users} users x {args.tasks_per_user} tasks, {args.connections} connections, "
                f"{args.threads} wrk threads, {args.duration} s per scenario; gunicorn {workers} workers x "
                f"{threads} threads (gthread), {os.cpu_count()} CPUs; database {name}",
                flush=True,
            )
            print(f"rate limits: {rate_limit_description(env)}", flush=True)

            log_path = os.path.join(work, "gunicorn.log")
            base_url = f"http://127.0.0.1:{env['PORT']}"
            with open(log_path, "w") as log:
                gunicorn = start_gunicorn(env, log)
            wait_healthy(base_url, gunicorn, log_path)

            started = time.monotonic()
            tasks = create_tasks(int(env["PORT"]), users, args.tasks_per_user, min(args.connections, 8))
            users_lua = os.path.join(work, "users.lua")
            write_users_lua(users_lua, users, tasks)
            (last_seeded,) = sql(database_url, "VACUUM ANALYZE", "SELECT max(id) FROM task")
            print(
                f"created {args.users * args.tasks_per_user} tasks through the API in "
                f"{time.monotonic() - started:.1f} s\n",
                flush=True,
            )

            print(HEADER)
            results = {}
            for scenario in args.scenarios:
                results[scenario] = result = run_wrk(wrk, base_url, scenario, users_lua, args)
                failures += result["non2xx"] + result["socket_errors"]
                print(scenario_line(scenario, result), flush=True)
                if scenario in CREATING:
                    sql(database_url, f"DELETE FROM task WHERE id > {last_seeded}")
                if scenario in WRITING:
                    sql(database_url, "VACUUM ANALYZE task")  # the next scenario starts without dead rows
            print("ref: the reference backend's figures, measured on this machine type with the default size")

            if "list" in results:
                print()
                if pgbench is None:
                    print("database ceiling: skipped (pgbench not found)")
                else:
                    script_path = os.path.join(work, "list.sql")
                    with open(script_path, "w") as file:
                        file.write(list_ceiling_script(token_prefix))
                    tps, latency, failed = run_pgbench(pgbench, database_url, script_path, args.users, args)
                    failures += failed
                    print(
                        f"database ceiling for list (pgbench: session lookup + list SQL, {args.connections} "
                        f"clients, {args.duration} s): {tps:.1f} tps, latency avg {latency} ms, {failed} failed"
                    )
                    print(
                        f"list req/s / pgbench tps = {results['list']['rps']:.1f} / {tps:.1f} = "
                        f"{results['list']['rps'] / tps:.3f}"
                    )

            print("\npeak resident memory (VmHWM) of each gunicorn worker:")
            for pid in worker_pids(gunicorn.pid):
                print(f"  worker {pid}: {peak_memory_kb(pid) / 1024:.1f} MB")
        except subprocess.CalledProcessError as error:
            print(f"{' '.join(error.cmd[-3:])} failed:\n{error.stdout}{error.stderr}", file=sys.stderr)
            failures += 1
        finally:
            if gunicorn is not None:
                stop_gunicorn(gunicorn)
            admin_execute(args.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if failures:
        print(f"\nFAILED: {failures} failed requests or transactions", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Stop):
        sys.exit("interrupted; the database was dropped and gunicorn stopped")
