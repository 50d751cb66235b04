"""todo-api under load, side by side with the reference backend and a ceiling app, as they run in production.

One command:

    make bench ARGS="..."   or   .venv/bin/python bench/run.py [--repeats 3] [--duration 10]
        [--scenarios health,list,get,create,update,toggle,mix] [--users 100] [--tasks-per-user 20]
        [--connections 16] [--threads 2] [--no-reference | --reference-url URL --reference-database-url URL]
        [--reference-script PATH] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Three servers on the same machine, loaded in turn:

    todo-api   gunicorn --config gunicorn.conf.py wsgi:app, as the Procfile runs it (access log off;
               WEB_CONCURRENCY and GUNICORN_WORKER_CONNECTIONS pass through; the rate limits are raised so that
               the load, all from one address, is counted but never refused)
    reference  the FastAPI backend todo-api replaces, started by ../shared/reference/run/run-reference.sh
               (uvicorn[standard], as many workers as todo-api, SQL echo off) when that script exists,
               or one already running (--reference-url, with the database it uses); --no-reference skips it
    ceiling    bench/ceiling_app.py: each scenario's SQL (the statements todo-api sends) behind a minimal
               Flask app on psycopg2, under the same gunicorn settings and worker class as todo-api

Each server has its database, with its own schema and the same users, Better Auth sessions and tasks: a
throwaway one for todo-api and the ceiling app (built with `flask --app todo_api init-db --auth-tables`),
a throwaway one for the reference (the auth tables, then the task table the reference creates itself).
Both are dropped at the end, also on failure or Ctrl-C. Users and sessions are inserted by SQL; every
user's tasks are created through each server's API, with the same titles, priorities and tags.

Then, for each scenario and each repeat, every server that has the route is loaded with wrk (bench/wrk.lua)
for --duration seconds, in an order rotated from one repeat to the next, spreading the requests across all
users' sessions; each server gets the requests its own frontend sends:

    health  GET /health (todo-api only)   list    GET /api/tasks
    get     GET /api/tasks/<id>           create  POST /api/tasks
    update  PUT /api/tasks/<id>           toggle  PATCH /api/tasks/<id>/complete
    mix     70% list, 10% create, 10% toggle, 10% update

The reference has no GET /api/tasks/<id> ("n/a"). Tasks created by a run are deleted after it and the
table is vacuumed after every run that writes, so every run sees the same lists. Each run prints a line;
at the end a markdown table gives, per scenario and server, the medians of requests/s, p50 and p99 over
the repeats, todo-api / reference and todo-api as a share of the ceiling app. Then: the machine and the
command; the database ceiling of the list (pgbench running the SQL todo-api sends for one list request,
with as many connections) and todo-api's list against it; the peak resident memory (VmHWM) of each
server's workers. Exits with status 1 if any request failed.

Needs wrk (installed with apt-get when missing and run as root) and pgbench.
"""

import argparse
import contextlib
import glob
import http.client
import json
import os
import random
import re
import runpy
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extras
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(os.path.abspath(sys.executable))
WRK_SCRIPT = os.path.join(REPO, "bench", "wrk.lua")
REFERENCE_SCRIPT = os.path.join(os.path.dirname(REPO), "shared", "reference", "run", "run-reference.sh")
sys.path.insert(0, REPO)

SCENARIOS = ("health", "list", "get", "create", "update", "toggle", "mix")
CREATING = {"create", "mix"}
WRITING = {"create", "update", "toggle", "mix"}
SERVICE, REFERENCE, CEILING = "todo-api", "reference", "ceiling"
SERVERS = (SERVICE, REFERENCE, CEILING)
# The scenarios each server has the routes for; the reference has no GET /api/tasks/<id>.
ROUTES = {
    SERVICE: set(SCENARIOS),
    REFERENCE: {"list", "create", "update", "toggle", "mix"},
    CEILING: {"list", "get", "create", "update", "toggle", "mix"},
}
MISSING_ROUTES = {REFERENCE: {"get"}}
REFERENCE_INSTALL_TIMEOUT = 900  # the first start installs the reference's venv
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
    """SIGTERM: unwind like Ctrl-C, so the databases are dropped and processes are stopped."""


def stop(_signal, _frame):
    raise Stop()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario and server (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default: %(default)s)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset, run in this order (default: all)"
    )
    parser.add_argument("--users", type=int, default=100, help="users, each with a session (default: %(default)s)")
    parser.add_argument("--tasks-per-user", type=int, default=20, help="default: %(default)s")
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="wrk connections, and pgbench clients for the ceiling (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk and pgbench threads (default: %(default)s)")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--no-reference", action="store_true", help="load todo-api and the ceiling app only")
    reference.add_argument(
        "--reference-url",
        help="a reference backend already running (e.g. http://127.0.0.1:7860), instead of starting one; "
        "needs --reference-database-url",
    )
    parser.add_argument(
        "--reference-database-url",
        help="the database the --reference-url backend uses: the benchmark's users, sessions and tasks are "
        "added to it and deleted at the end",
    )
    parser.add_argument(
        "--reference-script",
        default=REFERENCE_SCRIPT,
        help="the script that starts the reference (default: the repository's ../shared/reference/run/"
        "run-reference.sh); without it, the reference is skipped",
    )
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database used only to create and drop the throwaway ones (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or not args.scenarios:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    if min(args.repeats, args.users, args.tasks_per_user, args.duration, args.threads) < 1:
        parser.error("--repeats, --users, --tasks-per-user, --duration and --threads must be at least 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if args.users > 9_000_000_000:
        parser.error("--users is at most 9,000,000,000")
    if bool(args.reference_url) != bool(args.reference_database_url):
        parser.error("--reference-url and --reference-database-url go together")
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


def service_app():
    """The service's app, for its configuration and statements (never served)."""
    from todo_api import create_app

    return create_app(
        {"DATABASE_URL": "postgresql://localhost/unused", "LOG_LEVEL": "WARNING", "SECRET_KEY": BENCH_SECRET}
    )


# -- Databases --------------------------------------------------------------


def admin_execute(admin_url, sql):
    connection = psycopg2.connect(libpq_url(admin_url))
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


def throwaway_database(admin_url, name, cleanup):
    """Create a database, to be dropped (FORCE) when `cleanup` unwinds; returns its libpq URL."""
    try:
        admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    except psycopg2.Error as error:
        raise SystemExit(f"cannot create a database through {admin_url}: {error}") from None
    cleanup.callback(admin_execute, admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return libpq_url(admin_url, name)


def sql(database_url, *statements, params=None):
    """Run statements in autocommit mode; returns the last one's first row, if it has rows."""
    connection = psycopg2.connect(database_url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement, params)
            return cursor.fetchone() if cursor.description else None
    finally:
        connection.close()


def random_id(length=32):
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def make_users(count):
    """[(user_id, token)] and the token prefix.

    A token is a random prefix (one per run) and a 10-digit user number: 32
    alphanumeric characters, like Better Auth's, that pgbench can compose.
    """
    prefix = random_id(22)
    return [(random_id(), f"{prefix}{FIRST_USER_NUMBER + number}") for number in range(count)], prefix


def insert_users(database_url, users, prefix):
    """The users and their live Better Auth sessions, by SQL."""
    connection = psycopg2.connect(database_url)
    try:
        with connection, connection.cursor() as cursor:
            psycopg2.extras.execute_values(
                cursor,
                'INSERT INTO "user" (id, name, email, "emailVerified", "createdAt", "updatedAt") VALUES %s',
                [
                    (user_id, f"bench{n}", f"bench-{prefix}-{n}@example.com", True)
                    for n, (user_id, _) in enumerate(users)
                ],
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


def delete_users(database_url, users):
    """Remove the benchmark's users, sessions and tasks from a database that is not ours."""
    user_ids = [user_id for user_id, _ in users]
    sql(
        database_url,
        "DELETE FROM task WHERE user_id = ANY(%(ids)s)",
        'DELETE FROM "session" WHERE "userId" = ANY(%(ids)s)',
        'DELETE FROM "user" WHERE id = ANY(%(ids)s)',
        params={"ids": user_ids},
    )


def create_auth_tables(database_url):
    """Better Auth's user and session tables, exactly as todo-api's `init-db --auth-tables` makes them."""
    from todo_api.db.tables import auth_tables

    engine = create_engine(make_url(database_url).set(drivername="postgresql+psycopg2"))
    try:
        with engine.begin() as connection:
            auth_tables(service_app().config).create_all(connection)
    finally:
        engine.dispose()


def postgres_version(database_url):
    return sql(database_url, "SHOW server_version")[0]


# -- Processes --------------------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# All load comes from 127.0.0.1, far over any real per-address limit: the limits are raised so
# every request is still counted (the limiter's cost is measured) but none is refused.
# RATELIMIT_* and REDIS_URL in the environment win, e.g. RATELIMIT_ENABLED=false to compare.
BENCH_RATE_LIMIT = "1000000000 per minute"
BENCH_SECRET = "bench-secret-0123456789abcdef"
# Likewise the places of one user's requests in progress: taken, never waited for (wrk's connections walk the users
# in turn, but `--users 1` sends every connection's requests for one user).
BENCH_CONCURRENT_PER_USER = "1000"


def service_environment(database_url, port):
    env = dict(os.environ)
    env.setdefault("RATELIMIT_PER_IP", BENCH_RATE_LIMIT)
    env.setdefault("RATELIMIT_PER_USER", BENCH_RATE_LIMIT)
    env.setdefault("RATELIMIT_KIB_PER_USER", BENCH_RATE_LIMIT)
    env.setdefault("SECRET_KEY", BENCH_SECRET)  # production refuses to start without one
    env.setdefault("RATELIMIT_CONCURRENT_PER_USER", BENCH_CONCURRENT_PER_USER)
    env.update(PORT=str(port), DATABASE_URL=database_url, GUNICORN_ACCESS_LOG="false")
    return env


def rate_limit_description(env):
    if env.get("RATELIMIT_ENABLED", "true").strip().lower() in ("0", "false", "no", "off"):
        return "off"
    storage = "Redis" if env.get("REDIS_URL", "").strip() else "in-memory"
    return f"per IP {env['RATELIMIT_PER_IP']}, per user {env['RATELIMIT_PER_USER']}, {storage} counters"


def gunicorn_settings(env):
    """Workers, connections per worker and worker class as gunicorn.conf.py computes them from this environment."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        conf = runpy.run_path(os.path.join(REPO, "gunicorn.conf.py"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return conf["workers"], conf["worker_connections"], conf["worker_class"]


def start_gunicorn(env, log, target):
    """gunicorn with the repository's gunicorn.conf.py, serving `target`."""
    return subprocess.Popen(
        [os.path.join(BIN, "gunicorn"), "--config", "gunicorn.conf.py", target],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(base_url, log_path, exited=lambda: None, timeout=30):
    """Wait for 200 from /health; `exited()` returns an exit status once the server has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = exited()
        if status is not None:
            raise RuntimeError(f"{base_url} exited with {status}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no healthy answer from {base_url} within {timeout} s:\n{tail(log_path)}")


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
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as file:
        return "".join(file.readlines()[-lines:])


def processes():
    """(pid, parent pid, process group, state) of every process."""
    table = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table.append((int(stat.split("/")[2]), int(fields[1]), int(fields[2]), fields[0]))
    return table


def children(parent_pid):
    return sorted(pid for pid, parent, _, _ in processes() if parent == parent_pid)


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def peak_memory_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class ReferenceProcess:
    """The reference backend as run-reference.sh starts it: a process group of its own, whose id the script
    prints first. The script's temporary copy of the app goes under `work`."""

    def __init__(self, script, work):
        self.script, self.work = script, work
        self.out_path = os.path.join(work, "reference.out")
        self.log_path = os.path.join(work, "reference.log")

    def start(self, database_url, port, workers):
        with open(self.out_path, "w") as out, open(self.log_path, "w") as log:
            done = subprocess.run(
                [self.script, database_url, str(port), str(workers)],
                stdout=out,
                stderr=log,
                env={**os.environ, "TMPDIR": self.work},
                cwd=self.work,
                timeout=REFERENCE_INSTALL_TIMEOUT,
            )
        if done.returncode != 0 or self.group() is None:
            raise RuntimeError(f"the reference did not start ({done.returncode}):\n{tail(self.log_path)}")

    def group(self):
        """The process group id the script printed, or None (not started yet, or it failed first)."""
        with contextlib.suppress(OSError), open(self.out_path) as out:
            for line in out:
                if line.strip().isdigit():
                    return int(line)
        return None

    def alive(self, group):
        return any(pgrp == group and state != "Z" for _, _, pgrp, state in processes())

    def stop(self, grace=20):
        group = self.group()
        if group is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
            deadline = time.monotonic() + grace
            while self.alive(group) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self.alive(group):
                return

    def workers(self):
        group = self.group()
        return [pid for pid in children(group) if "spawn_main" in command_line(pid)] if group else []


# -- Servers and their data -------------------------------------------------


@dataclass
class Server:
    name: str
    base_url: str
    client: str  # whose frontend's requests wrk sends it (see wrk.lua)
    database_url: str  # where its tasks live
    workers: object = list  # () -> the pids of its worker processes
    log_path: str = ""
    users_lua: str = ""
    user_ids: list = field(default_factory=list)
    last_seeded: int = 0

    def runs(self, scenario):
        return scenario in ROUTES[self.name]


def task_bodies(users, per_user):
    """The fields of every user's tasks, the same for every server: [[body, ...] per user]."""
    rng = random.Random(len(users) * 1_000_003 + per_user)
    bodies = []
    for _ in users:
        own = []
        for number in range(per_user):
            title = f"{rng.choice(WORDS).capitalize()} {rng.choice(WORDS)} #{number}"
            own.append({"title": title, "priority": PRIORITIES[number % 3], "tags": rng.sample(TAGS, number % 3)})
        bodies.append(own)
    return bodies


def create_tasks(base_url, users, bodies, concurrency):
    """Create every user's tasks with POST /api/tasks, in the same order on every server; returns the task ids
    of each user."""
    address = urllib.parse.urlsplit(base_url)
    local = threading.local()

    def post(job):
        index, number = job
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(address.hostname, address.port or 80, timeout=30)
        local.connection.request(
            "POST",
            "/api/tasks",
            json.dumps(bodies[index][number]),
            {"Authorization": f"Bearer {users[index][1]}", "Content-Type": "application/json"},
        )
        response = local.connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {base_url}/api/tasks answered {response.status}: {answer[:300]!r}")
        return index, json.loads(answer)["data"]["id"]

    jobs = [(index, number) for number in range(len(bodies[0])) for index in range(len(users))]
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


def seed(server, users, bodies, args, work):
    """Create the users' tasks on one server through its API, and note where the seeded rows end."""
    tasks = create_tasks(server.base_url, users, bodies, min(args.connections, 8))
    server.users_lua = os.path.join(work, f"users-{server.name}.lua")
    write_users_lua(server.users_lua, users, tasks)
    server.user_ids = [user_id for user_id, _ in users]
    (server.last_seeded,) = sql(server.database_url, "VACUUM ANALYZE task", "SELECT max(id) FROM task")


def reset(server, scenario):
    """Leave the server's data as it was seeded: without the tasks a run created, without dead rows."""
    if scenario in CREATING:
        sql(
            server.database_url,
            "DELETE FROM task WHERE id > %(last)s AND user_id = ANY(%(ids)s)",
            params={"last": server.last_seeded, "ids": server.user_ids},
        )
    if scenario in WRITING:
        sql(server.database_url, "VACUUM ANALYZE task")


# -- Load -------------------------------------------------------------------


def cpu_seconds(pids):
    """{pid: user and system CPU seconds used so far}, of those of the processes still running."""
    used = {}
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return used


def cpu_used(before, after):
    """CPU seconds the processes running at both readings used between them."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def postgres_backends():
    return [pid for pid, _, _, _ in processes() if command_line(pid).startswith("postgres: ")]


def run_wrk(wrk, server, scenario, args):
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
        server.base_url,
        "--",
        scenario,
        server.users_lua,
        server.client,
    ]
    workers, backends = server.workers(), postgres_backends()
    app_before, database_before = cpu_seconds(workers), cpu_seconds(backends)
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
    app_cpu = cpu_used(app_before, cpu_seconds(workers))
    database_cpu = cpu_used(database_before, cpu_seconds(backends))
    match = re.search(r"^WRK_RESULT (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}
    # CPU time per request of the server's workers and of Postgres (of the backends open before and after the run:
    # a server that opens a connection per request, as the reference does, shows less than Postgres spent on it)
    result["app_cpu_us"] = app_cpu / max(result["requests"], 1) * 1e6
    result["database_cpu_us"] = database_cpu / max(result["requests"], 1) * 1e6
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["socket_errors"] = sum(result[key] for key in ("connect", "read", "write", "timeout"))
    return result


def rotated(servers, repeat):
    """The servers in the order of one repeat: each repeat starts one server later."""
    shift = repeat % len(servers)
    return servers[shift:] + servers[:shift]


# -- Report -----------------------------------------------------------------


def median_figures(runs):
    """(req/s, p50 µs, p99 µs): the medians over a server's runs of one scenario."""
    return tuple(statistics.median(run[key] for run in runs) for key in ("rps", "p50_us", "p99_us"))


def run_line(scenario, server, repeat, repeats, result):
    errors = result["non2xx"] + result["socket_errors"]
    return (
        f"{scenario:<7} {server:<10} run {repeat}/{repeats} {result['rps']:>9.1f} req/s"
        f"  p50 {result['p50_us'] / 1000:>6.1f} ms  p99 {result['p99_us'] / 1000:>6.1f} ms"
        f"  CPU/request: app {result['app_cpu_us']:>5.0f} µs, Postgres {result['database_cpu_us']:>4.0f} µs"
        + (f"  {result['non2xx']} non-2xx, {result['socket_errors']} socket errors" if errors else "")
    )


def results_table(scenarios, results, servers):
    """The markdown table of medians; `results` maps (scenario, server name) to that server's runs.

    "n/a": the server has no such route; "-": not measured.
    """
    names = {server.name for server in servers}

    def unmeasured(name, scenario):
        return "n/a" if name in names and scenario in MISSING_ROUTES.get(name, ()) else "-"

    lines = [
        "| scenario | todo-api req/s | p50 ms | p99 ms | reference req/s | p50 ms | p99 ms | ratio "
        "| ceiling req/s | % of ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        figures = {name: median_figures(runs) for (run, name), runs in results.items() if run == scenario}
        cells = [f"`{scenario}`"]
        for name in (SERVICE, REFERENCE):
            if name in figures:
                rps, p50, p99 = figures[name]
                cells += [f"{rps:,.0f}", f"{p50 / 1000:.1f}", f"{p99 / 1000:.1f}"]
            else:
                cells += [unmeasured(name, scenario)] * 3
        service = figures.get(SERVICE, (None,))[0]
        if service is not None and REFERENCE in figures:
            cells.append(f"{service / figures[REFERENCE][0]:.2f}x")
        else:
            cells.append(unmeasured(REFERENCE, scenario))
        if CEILING in figures:
            ceiling = figures[CEILING][0]
            cells += [f"{ceiling:,.0f}", f"{100 * service / ceiling:.0f}%" if service is not None else "-"]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cpu_table(scenarios, results, servers):
    """A markdown table of the median CPU µs per request of each server's workers (and of Postgres)."""
    names = [server.name for server in servers]
    lines = ["| scenario | " + " | ".join(f"{name} µs" for name in names) + " |", "|---|" + "---:|" * len(names)]
    for scenario in scenarios:
        cells = [f"`{scenario}`"]
        for name in names:
            runs = results.get((scenario, name))
            if not runs:
                cells.append("-")
                continue
            app = statistics.median(run["app_cpu_us"] for run in runs)
            database = statistics.median(run["database_cpu_us"] for run in runs)
            cells.append(f"{app:,.0f} ({database:,.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cpu_model():
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def command_description(argv):
    return " ".join(["bench/run.py", *map(shlex.quote, argv)])


def list_ceiling_script(token_prefix):
    """A pgbench script of the SQL the service sends for one `GET /api/tasks`.

    The statements are compiled from the service's own query builders, with
    literal values as psycopg2 sends them: the session lookup for a random
    user's token, then that user's list (pgbench's simple query protocol).
    The service sends the token's digest, computed in Python; pgbench cannot
    hash, so its lookup computes the same digest in SQL (a constant, folded
    once when the statement is planned).
    """
    from todo_api.auth.sessions import session_lookup
    from todo_api.db import token_digest
    from todo_api.tasks import listing
    from todo_api.tasks.schemas import list_query_schema

    app = service_app()
    dialect = postgresql.psycopg2.dialect()
    token_mark, user_mark = "BenchTokenMark", "BenchUserMark"
    lookup = session_lookup(app.config).params(digest=token_mark.encode())
    page = listing.list_statement(user_mark, list_query_schema.load({}), "postgresql", listing.get_cursors(app))
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


# -- The benchmark ----------------------------------------------------------


def start_servers(args, work, cleanup, users, prefix):
    """Databases, users and sessions; todo-api, the ceiling app and the reference, started and healthy.

    Returns (servers, todo-api's environment, gunicorn settings, a line saying how the reference runs).
    Everything started is stopped, and every database dropped, when `cleanup` unwinds.
    """
    name = f"todo_api_bench_{secrets.token_hex(6)}"
    service_db = throwaway_database(args.admin_url, name, cleanup)
    env = service_environment(service_db, free_port())
    subprocess.run(
        [os.path.join(BIN, "flask"), "--app", "todo_api", "init-db", "--auth-tables"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    insert_users(service_db, users, prefix)
    settings = gunicorn_settings(env)
    workers = settings[0]

    servers = []
    for server_name, target, server_env in (
        (SERVICE, "wsgi:app", env),
        (CEILING, "bench.ceiling_app:create_app()", {**env, "PORT": str(free_port())}),
    ):
        log_path = os.path.join(work, f"{server_name}.log")
        with open(log_path, "w") as log:
            process = start_gunicorn(server_env, log, target)
        cleanup.callback(stop_gunicorn, process)
        server = Server(
            server_name,
            f"http://127.0.0.1:{server_env['PORT']}",
            SERVICE,
            service_db,
            workers=lambda process=process: children(process.pid),
            log_path=log_path,
        )
        wait_healthy(server.base_url, log_path, process.poll)
        servers.append(server)

    if args.no_reference:
        reference = "reference: not run (--no-reference)"
    elif args.reference_url:
        reference_db = libpq_url(args.reference_database_url)
        insert_users(reference_db, users, prefix)
        cleanup.callback(delete_users, reference_db, users)
        servers.insert(1, Server(REFERENCE, args.reference_url.rstrip("/"), REFERENCE, reference_db))
        wait_healthy(servers[1].base_url, None)
        reference = f"reference: the one running at {args.reference_url}"
    elif os.path.exists(args.reference_script):
        reference_db = throwaway_database(args.admin_url, f"{name}_reference", cleanup)
        create_auth_tables(reference_db)
        insert_users(reference_db, users, prefix)
        process = ReferenceProcess(args.reference_script, work)
        cleanup.callback(process.stop)
        port = free_port()
        print(f"starting the reference with {args.reference_script} (its first run installs it) ...", flush=True)
        process.start(reference_db, port, workers)
        servers.insert(
            1,
            Server(
                REFERENCE,
                f"http://127.0.0.1:{port}",
                REFERENCE,
                reference_db,
                workers=process.workers,
                log_path=process.log_path,
            ),
        )
        reference = f"reference: {workers} uvicorn[standard] workers, started by {args.reference_script}"
    else:
        reference = f"reference: not run ({args.reference_script} not found; see --reference-url)"
    return servers, env, settings, reference


def run_all(wrk, servers, args):
    """Every scenario, every repeat, every server that has the route; returns {(scenario, server): [result]}."""
    results = {}
    for scenario in args.scenarios:
        for repeat in range(args.repeats):
            for server in rotated(servers, repeat):
                if not server.runs(scenario):
                    continue
                result = run_wrk(wrk, server, scenario, args)
                results.setdefault((scenario, server.name), []).append(result)
                print(run_line(scenario, server.name, repeat + 1, args.repeats, result), flush=True)
                reset(server, scenario)
    return results


def bench(args, wrk, pgbench, work, cleanup):
    """Run the benchmark and print its report; returns the number of failed requests and transactions."""
    users, prefix = make_users(args.users)
    servers, env, (workers, connections, worker_class), reference = start_servers(args, work, cleanup, users, prefix)
    started = time.monotonic()
    bodies = task_bodies(users, args.tasks_per_user)
    for server in servers:
        if server.name != CEILING:
            seed(server, users, bodies, args, work)
    ceiling = next(server for server in servers if server.name == CEILING)
    service = servers[0]
    ceiling.users_lua, ceiling.user_ids, ceiling.last_seeded = service.users_lua, service.user_ids, service.last_seeded
    runs = sum(server.runs(scenario) for scenario in args.scenarios for server in servers) * args.repeats
    print(
        f"created {args.users * args.tasks_per_user} tasks on each server through its API in "
        f"{time.monotonic() - started:.1f} s; {runs} runs of {args.duration} s follow "
        f"(about {max(1, round(runs * (args.duration + 1) / 60))} min)\n",
        flush=True,
    )

    results = run_all(wrk, servers, args)
    failures = sum(run["non2xx"] + run["socket_errors"] for runs in results.values() for run in runs)

    print("\n## Results\n")
    print(f"- command: `{command_description(sys.argv[1:])}`")
    print(
        f"- machine: {len(os.sched_getaffinity(0))} CPUs ({cpu_model()}), Postgres "
        f"{postgres_version(service.database_url)} on {make_url(args.admin_url).host or 'its socket'}"
    )
    print(
        f"- load: {args.users} users x {args.tasks_per_user} tasks, wrk {args.connections} connections and "
        f"{args.threads} threads, {args.duration} s per run; per scenario and server, "
        + (f"the median of {args.repeats} interleaved runs" if args.repeats > 1 else "one run")
    )
    print(
        f"- todo-api: gunicorn {workers} workers x {connections} connections ({worker_class}); rate limits "
        f"{rate_limit_description(env)}"
    )
    print(f"- {reference}")
    print(f"- ceiling: bench/ceiling_app.py under the same gunicorn settings ({worker_class})\n")
    for line in results_table(args.scenarios, results, servers):
        print(line)
    print(
        "\nratio: todo-api req/s / reference req/s; % of ceiling: todo-api req/s / ceiling app req/s; "
        "n/a: no such route"
    )
    print(
        "\nCPU time per request, medians (the server's workers; in parentheses, the Postgres backends open "
        "throughout each run):\n"
    )
    for line in cpu_table(args.scenarios, results, servers):
        print(line)
    errors = [
        f"{scenario} {name}: {sum(run['non2xx'] for run in runs)} non-2xx, "
        f"{sum(run['socket_errors'] for run in runs)} socket errors"
        for (scenario, name), runs in results.items()
        if any(run["non2xx"] + run["socket_errors"] for run in runs)
    ]
    print("errors: " + ("; ".join(errors) if errors else "none"))

    if ("list", SERVICE) in results:
        print()
        if pgbench is None:
            print("database ceiling: skipped (pgbench not found)")
        else:
            script_path = os.path.join(work, "list.sql")
            with open(script_path, "w") as file:
                file.write(list_ceiling_script(prefix))
            tps, latency, failed = run_pgbench(pgbench, service.database_url, script_path, args.users, args)
            failures += failed
            list_rps = median_figures(results[("list", SERVICE)])[0]
            print(
                f"database ceiling for list (pgbench: session lookup + list SQL, {args.connections} "
                f"clients, {args.duration} s): {tps:.1f} tps, latency avg {latency} ms, {failed} failed"
            )
            print(f"todo-api list req/s / pgbench tps = {list_rps:.1f} / {tps:.1f} = {list_rps / tps:.3f}")

    print("\npeak resident memory (VmHWM) of each worker:")
    for server in servers:
        for pid in server.workers():
            peak = peak_memory_kb(pid)
            if peak is not None:
                print(f"  {server.name} worker {pid}: {peak / 1024:.1f} MB")
    return failures


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    wrk = find_wrk()
    pgbench = find_pgbench()
    with tempfile.TemporaryDirectory(prefix="todo-api-bench-") as work, contextlib.ExitStack() as cleanup:
        try:
            failures = bench(args, wrk, pgbench, work, cleanup)
        except subprocess.CalledProcessError as error:
            print(f"{' '.join(error.cmd[-3:])} failed:\n{error.stdout}{error.stderr}", file=sys.stderr)
            failures = 1
    if failures:
        print(f"\nFAILED: {failures} failed requests or transactions", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Stop):
        sys.exit("interrupted; the databases were dropped and every server stopped")
