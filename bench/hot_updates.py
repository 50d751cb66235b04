"""Which writes to `task` Postgres makes in place (HOT), and what the task indexes cost them.

A throwaway Postgres database gets the schema as of migration 0007 and the
benchmark's data: 100 users with 20 tasks each (half with a due date, a
quarter with a reminder, a third completed), one user with 40,000 tasks and
three with 100, 1,000 and 10,000 tasks for the sorts. It is copied for each
variant of the task table (`VARIANTS`: indexes dropped or changed, fillfactor;
`0008` is what migration 0008 makes), rewritten (VACUUM FULL) and analysed.
Printed per variant:

- pgbench running the SQL the service sends for a toggle (`PATCH
  /api/tasks/<id>/complete`) and for an edit that renames a task (`PUT
  /api/tasks/<id>` with a new title) on a random task of the 100 users:
  transactions per second, the share of updates made in place (n_tup_hot_upd
  / n_tup_upd of pg_stat_user_tables) and the table's size afterwards. These
  rates follow whatever else the machine is doing.
- every one of the 2,000 tasks toggled once, three times over, one at a time:
  the HOT share and the WAL bytes per toggle (EXPLAIN's WAL figures), which do
  not depend on the machine's load. The first pass meets the freshly written
  pages, where only the fillfactor's room takes a new version in place.
- the reminder worker's claim (`reminders._TASKS_DUE`) when no reminder is due,
  as more and more completed tasks whose reminder never went out accumulate.
- the first page of 50 of a list sorted by `updated_at` and by `created_at`,
  for users with 100, 1,000 and 10,000 tasks (EXPLAIN ANALYZE, median).

Everything is dropped at the end.

Usage:
    .venv/bin/python bench/hot_updates.py [--duration 15] [--clients 8] [--rounds 2]
        [--variants 0007,no-updated,...] [--scripts toggle,rename] [--backlogs 0,100000,1000000]
        [--claim-variants 0007,0008] [--no-sorts] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import uuid

import psycopg2
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from todo_api import create_app  # noqa: E402
from todo_api.tasks import listing  # noqa: E402
from todo_api.tasks.schemas import list_query_schema  # noqa: E402

SMALL_USERS = 100
TASKS_PER_USER = 20
SORT_SIZES = (100, 1000, 10000)

FILL = f"""
INSERT INTO task (user_id, title, description, completed, priority, category, tags, created_at, updated_at,
                  due_date, remind_at, reminder_sent, due_all_day)
SELECT 'user-' || ((g - 1) / {TASKS_PER_USER} + 1), 'Task ' || g || ' ' || left(md5(g::text), 12),
       CASE WHEN g % 2 = 0 THEN 'Notes about task ' || g || ': ' || md5(g::text) END,
       g % 3 = 0, (ARRAY['low', 'medium', 'high'])[g % 3 + 1]::taskpriority,
       CASE WHEN g % 4 = 0 THEN 'work' END, '["home", "errand"]',
       now() - g * interval '1 minute', now() - g * interval '30 seconds',
       CASE WHEN g % 2 = 1 THEN now() + (g % 200 - 100) * interval '1 hour' END,
       CASE WHEN g % 4 = 1 THEN now() + (g % 200 - 100) * interval '1 hour' - interval '30 minutes' END,
       false, false
FROM generate_series(1, {SMALL_USERS * TASKS_PER_USER}) AS g;
INSERT INTO task (user_id, title, description, completed, priority, tags, created_at, updated_at, reminder_sent,
                  due_all_day)
SELECT owner, 'Task ' || g, 'Notes ' || g, g % 3 = 0, (ARRAY['low', 'medium', 'high'])[g % 3 + 1]::taskpriority,
       '[]', now() - g * interval '1 minute', now() - random() * interval '300 days', false, false
FROM (VALUES ('user-big', 40000), ('user-n100', 100), ('user-n1000', 1000), ('user-n10000', 10000)) AS users(owner, n),
     generate_series(1, n) AS g;
"""
RETURNING = (
    "RETURNING task.id, task.user_id, task.title, task.description, task.completed, task.priority, task.category, "
    "task.tags, task.created_at, task.updated_at, task.due_date, task.recurrence_pattern, task.remind_at, "
    "task.reminder_sent, task.due_all_day, task.due_local, task.remind_local"
)
# The statements of models._TOGGLE_PLAIN and of a plain update, as psycopg2 sends them.
OWNED = (
    f"WHERE task.id = (:u - 1) * {TASKS_PER_USER} + :n AND task.user_id = 'user-' || :u "
    "AND task.recurrence_pattern IS NULL"
)
NEXT_VERSION = "updated_at=GREATEST(now() AT TIME ZONE 'UTC', task.updated_at + INTERVAL '1 microsecond')"
PICK = f"\\set u random(1, {SMALL_USERS})\n\\set n random(1, {TASKS_PER_USER})\n"
SCRIPTS = {
    "toggle": PICK + f"UPDATE task SET completed=NOT task.completed, {NEXT_VERSION} {OWNED} {RETURNING};\n",
    "rename": PICK
    + "\\set r random(1, 1000000000)\n"
    + f"UPDATE task SET title='Renamed ' || :r, description='', priority='medium', {NEXT_VERSION} {OWNED} "
    + f"{RETURNING};\n",
}

UNSENT = "NOT reminder_sent"
VARIANTS = {
    "0007": [],
    "no-updated": ["DROP INDEX ix_task_user_updated"],
    "no-updated-ff90": ["DROP INDEX ix_task_user_updated", "ALTER TABLE task SET (fillfactor = 90)"],
    "no-updated-ff80": ["DROP INDEX ix_task_user_updated", "ALTER TABLE task SET (fillfactor = 80)"],
    # The reminder indexes of 0006 also name `completed` (in their WHERE), which a toggle changes.
    "0008-ff100": [
        "DROP INDEX ix_task_user_updated",
        "DROP INDEX ix_task_reminder_at",
        "DROP INDEX ix_task_reminder_due_date",
        f"CREATE INDEX ix_task_reminder_at ON task (remind_at) WHERE {UNSENT}",
        f"CREATE INDEX ix_task_reminder_due_date ON task (due_date) WHERE remind_at IS NULL AND {UNSENT}",
    ],
}
VARIANTS["0008"] = [*VARIANTS["0008-ff100"], "ALTER TABLE task SET (fillfactor = 90)"]
VARIANTS["0008-ff80"] = [*VARIANTS["0008-ff100"], "ALTER TABLE task SET (fillfactor = 80)"]
# Completed tasks whose reminder never went out: the partial reminder indexes of 0008 keep them.
BACKLOG = """
INSERT INTO task (user_id, title, completed, priority, tags, created_at, updated_at, remind_at, due_date,
                  reminder_sent, due_all_day)
SELECT 'user-' || (g % {users} + 1), 'Done ' || g, true, 'medium', '[]', now(), now(),
       CASE WHEN g % 2 = 0 THEN (now() AT TIME ZONE 'UTC') - g * interval '1 minute' END,
       (now() AT TIME ZONE 'UTC') - g * interval '1 minute', false, false
FROM generate_series(1, {count}) AS g
"""
# The worker has pushed every reminder due so far: a pass finds none (most passes do not).
CAUGHT_UP = """
UPDATE task SET reminder_sent = true
WHERE remind_at <= now() AT TIME ZONE 'UTC'
   OR (remind_at IS NULL AND due_date <= now() AT TIME ZONE 'UTC' + interval '1 hour')
"""
SUBSCRIPTIONS = f"""
INSERT INTO push_subscription (user_id, endpoint, p256dh, auth, created_at, updated_at)
SELECT 'user-' || g, 'https://push.example/' || g, 'key', 'auth', now(), now()
FROM generate_series(1, {SMALL_USERS}) AS g
"""


def libpq_url(admin_url, database):
    return make_url(admin_url).set(drivername="postgresql", database=database).render_as_string(hide_password=False)


def autocommit(url):
    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection


def execute(url, *statements):
    connection = autocommit(url)
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def make_base(admin_url, name):
    execute(admin_url, f'CREATE DATABASE "{name}"')
    url = libpq_url(admin_url, name)
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    environment = {**os.environ, "DATABASE_URL": url, "DATABASE_MIGRATION_URL": url}
    for command in (["init-db", "--auth-tables"], ["db", "downgrade", "0007"]):  # variants start from 0007
        subprocess.run([flask, "--app", "todo_api", *command], env=environment, check=True, cwd=REPO)
    execute(url, FILL, "ANALYZE task")
    # Builds statements only: it never connects.
    return create_app({"DATABASE_URL": url, "SECRET_KEY": "bench", "TESTING": True})


def copy_of(admin_url, base, variant):
    name = f"{base}_{uuid.uuid4().hex[:6]}"
    execute(admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{base}"')
    url = libpq_url(admin_url, name)
    execute(url, *VARIANTS[variant], "VACUUM FULL task", "ANALYZE task", "CHECKPOINT")
    return name, url


def table_stats(url):
    connection = autocommit(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size('task') FROM pg_stat_user_tables "
                "WHERE relname = 'task'"
            )
            return cursor.fetchone()
    finally:
        connection.close()


def run_pgbench(url, script, args):
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write(SCRIPTS[script])
        file.flush()
        done = subprocess.run(
            ["pgbench", "--no-vacuum", "--protocol=simple", "--client", str(args.clients), "--jobs", "2", "--time",
             str(args.duration), "--file", file.name, url],
            capture_output=True, text=True, timeout=args.duration + 120,
        )  # fmt: skip
    tps = re.search(r"^tps = ([\d.]+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not tps:
        raise SystemExit(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    return float(tps.group(1))


def toggle_passes(args, base, passes=3):
    """Every task of the 100 users toggled once per pass, one at a time: HOT share and WAL bytes per toggle.

    Unlike pgbench's rate, these do not depend on what else the machine is doing. A new version fits on its
    page in the fillfactor's free room, or in the room of versions pruned since: dead to every transaction of
    the database. An ANALYZE holds a snapshot while it runs, so autovacuum is off for the table here (with it
    on, its ANALYZE after some 5,000 toggles makes a few hundred of them miss the room).
    """
    toggle = (
        f"UPDATE task SET completed=NOT task.completed, {NEXT_VERSION} WHERE task.id = %s "
        f"AND task.user_id = %s AND task.recurrence_pattern IS NULL {RETURNING}"
    )
    found = {}
    for variant in args.variants:
        name, url = copy_of(args.admin_url, base, variant)
        execute(url, "ALTER TABLE task SET (autovacuum_enabled = false)")
        connection = autocommit(url)
        with connection.cursor() as cursor:
            for number in range(passes):
                cursor.execute("SELECT pg_stat_reset_single_table_counters('task'::regclass)")
                wal = 0
                for task_id in range(1, SMALL_USERS * TASKS_PER_USER + 1):
                    owner = f"user-{(task_id - 1) // TASKS_PER_USER + 1}"
                    cursor.execute("EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + toggle, (task_id, owner))
                    wal += cursor.fetchone()[0][0]["Plan"]["WAL Bytes"]
                cursor.execute("SELECT pg_stat_force_next_flush()")
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'task'")
                updates, hot = cursor.fetchone()
                found[variant, number] = (hot / updates, wal / updates)
        connection.close()
        execute(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')
    return found


def write_runs(args, base):
    results = {(variant, script): [] for variant in args.variants for script in args.scripts}
    for round_number in range(args.rounds):
        shift = round_number % len(args.variants)
        for variant in args.variants[shift:] + args.variants[:shift]:
            for script in args.scripts:
                name, url = copy_of(args.admin_url, base, variant)
                execute(url, "SELECT pg_stat_reset_single_table_counters('task'::regclass)")
                tps = run_pgbench(url, script, args)
                updates, hot, size = table_stats(url)
                results[variant, script].append((tps, hot / updates if updates else 0.0, size))
                execute(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')
                print(f"  {variant} {script}: {tps:.0f} tps, {hot}/{updates} HOT", file=sys.stderr)
    return results


def claim_costs(args, base, repeats=7):
    """Median time (ms) of the reminder worker's claim query per variant and backlog of completed tasks."""
    from todo_api.reminders.worker import _TASKS_DUE

    claim = str(_TASKS_DUE.compile(dialect=postgresql.psycopg2.dialect()))
    now = "(now() AT TIME ZONE 'UTC')"
    claim = claim.replace("%(now)s", now).replace("%(due_by)s", f"{now} + interval '1 hour'")
    claim = claim.replace("%(batch)s", "100")
    costs = {}
    for variant in args.claim_variants:
        name, url = copy_of(args.admin_url, base, variant)
        execute(url, SUBSCRIPTIONS, CAUGHT_UP)
        added = 0
        for backlog in args.backlogs:
            execute(url, BACKLOG.format(users=SMALL_USERS, count=backlog - added), "VACUUM ANALYZE task")
            added = backlog
            connection = autocommit(url)
            with connection.cursor() as cursor:
                times = []
                for _ in range(repeats):
                    cursor.execute("BEGIN")  # FOR UPDATE: the locks go with the transaction
                    cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + claim)
                    times.append(cursor.fetchone()[0][0]["Execution Time"])
                    cursor.execute("ROLLBACK")
            connection.close()
            costs[variant, backlog] = statistics.median(times)
        execute(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')
    return costs


def sort_costs(args, base, app, repeats=15):
    """Median execution time (ms) of a first page of 50 per variant, sort and list size."""
    cursors = listing.get_cursors(app)
    dialect = postgresql.psycopg2.dialect()
    costs = {}
    for variant in args.variants:
        name, url = copy_of(args.admin_url, base, variant)
        connection = autocommit(url)
        with connection.cursor() as cursor:
            for size in SORT_SIZES:
                for sort_by in ("updated_at", "created_at"):
                    query = list_query_schema.load({"sort_by": sort_by, "limit": "50"})
                    statement = listing.list_statement(f"user-n{size}", query, "postgresql", cursors)
                    sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
                    times = []
                    for _ in range(repeats):
                        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
                        times.append(cursor.fetchone()[0][0]["Execution Time"])
                    costs[variant, size, sort_by] = statistics.median(times)
        connection.close()
        execute(args.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')
    return costs


def print_rates(args, results):
    print(f"pgbench, {args.clients} clients, {args.duration} s per run, {args.rounds} runs each (medians)")
    print("| variant | " + " | ".join(f"{script} tps | {script} HOT | table after" for script in args.scripts) + " |")
    print("|---|" + "---:|---:|---:|" * len(args.scripts))
    for variant in args.variants:
        cells = []
        for script in args.scripts:
            runs = results[variant, script]
            tps, hot, size = (statistics.median(run[column] for run in runs) for column in range(3))
            cells.append(f"{tps:,.0f} | {hot:.0%} | {size / 2**20:.1f} MB")
        print(f"| {variant} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant and script, interleaved")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--variants", type=lambda value: value.split(","), default=list(VARIANTS))
    parser.add_argument("--scripts", type=lambda value: value.split(","), default=list(SCRIPTS))
    parser.add_argument("--no-sorts", action="store_true", help="skip the list sorts")
    parser.add_argument("--claim-variants", type=lambda value: value.split(","), default=["0007", "0008"])
    parser.add_argument(
        "--backlogs",
        type=lambda value: [int(size) for size in value.split(",")],
        default=[0, 100000, 1000000],
        help="completed tasks never reminded, for the worker's claim (default: 0,100000,1000000)",
    )
    args = parser.parse_args()
    for name, chosen, known in (
        ("variants", args.variants, VARIANTS),
        ("claim variants", args.claim_variants, VARIANTS),
        ("scripts", args.scripts, SCRIPTS),
    ):
        if set(chosen) - set(known):
            parser.error(f"unknown {name}: {', '.join(sorted(set(chosen) - set(known)))}; known: {', '.join(known)}")

    base = f"todo_api_hot_{uuid.uuid4().hex[:8]}"
    try:
        app = make_base(args.admin_url, base)
        results = write_runs(args, base)
        passes = toggle_passes(args, base)
        claims = claim_costs(args, base)
        costs = None if args.no_sorts else sort_costs(args, base, app)
    finally:
        execute(args.admin_url, f'DROP DATABASE IF EXISTS "{base}" WITH (FORCE)')

    if args.rounds:
        print_rates(args, results)
    print()
    print("Each of the 2,000 tasks toggled once per pass, one at a time: HOT share, WAL bytes per toggle")
    print("| variant | " + " | ".join(f"pass {number + 1} HOT | WAL" for number in range(3)) + " |")
    print("|---|" + "---:|---:|" * 3)
    for variant in args.variants:
        cells = [f"{passes[variant, number][0]:.0%} | {passes[variant, number][1]:,.0f}" for number in range(3)]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    print()
    print("The worker's claim finding no due reminder, median time in Postgres (ms), by completed tasks never reminded")
    print("| variant | " + " | ".join(f"{backlog:,}" for backlog in args.backlogs) + " |")
    print("|---|" + "---:|" * len(args.backlogs))
    for variant in args.claim_variants:
        print(f"| {variant} | " + " | ".join(f"{claims[variant, backlog]:.2f}" for backlog in args.backlogs) + " |")
    if costs is None:
        return
    print()
    print("First page of 50, median execution time in Postgres (ms)")
    columns = [(size, sort_by) for size in SORT_SIZES for sort_by in ("updated_at", "created_at")]
    print("| variant | " + " | ".join(f"{sort_by} {size:,}" for size, sort_by in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for variant in args.variants:
        cells = [f"{costs[variant, size, sort_by]:.2f}" for size, sort_by in columns]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
