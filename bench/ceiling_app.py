"""The ceiling for `bench/run.py`: each scenario's SQL behind Flask, and nothing else.

It answers the benchmark's requests (the frontend's, as `wrk.lua` sends them
to todo-api) with the same `{"data": ...}` bodies as todo-api, by sending
Postgres exactly the statements todo-api sends for them, strings and
parameter names included: the statement that does the work and checks the
session in its WHERE clause, preceded by the session lookup for a session
this worker has not seen yet, followed by it when the work finds nothing
(to tell 401 from 404), as todo-api does (see todo_api/auth/sessions.py). No validation,
no rate limits, no ETags, no SQLAlchemy: psycopg2 directly, one connection per
thread, in autocommit mode with the time zone set to UTC (as todo-api's), and
orjson for the bodies. Served by gunicorn with the service's own
gunicorn.conf.py (same worker class and workers), so the difference
between the two is the service's code alone.

    DATABASE_URL=postgresql://... gunicorn --config gunicorn.conf.py 'bench.ceiling_app:create_app()'

`tests/test_bench.py` checks that every statement here is the one the service
sends for the same request, and that the bodies match.
"""

import hashlib
import os
import threading
from datetime import UTC, datetime

import orjson
import psycopg2
import psycopg2.extras
from flask import Flask, Response, request

# -- The session lookup ------------------------------------------------------
# The statement todo-api sends for a session a worker has not seen yet, and after work that found nothing
# (todo_api/auth/sessions.py `session_lookup`), and its parameters. When the service's lookup changes, change these.
SESSION_LOOKUP = (
    'SET LOCAL statement_timeout = 5000; SELECT session."userId" \nFROM session \n'
    'WHERE todo_api_token_digest(session.token) = %(digest)s AND session."expiresAt" > now()'
)


# The session check every task statement carries (todo_api/auth/sessions.py `session_guard`).
SESSION_CHECK = (
    'EXISTS (SELECT * \nFROM session \nWHERE todo_api_token_digest(session.token) = %(digest)s AND session."expiresAt" '
    '> now() AND session."userId" = %(owner_id)s)'
)
KNOWN_SESSIONS = 10_000


def session_lookup_parameters(token):
    return {"digest": hashlib.sha256(token.encode()).digest()}


# -- The work: todo_api/tasks/store.py and listing.py, as they compile for psycopg2 --
TASK_COLUMNS = (
    "task.id, task.user_id, task.title, task.description, task.completed, task.priority, task.category, "
    "task.tags, task.created_at, task.updated_at, task.due_date, task.recurrence_pattern, task.remind_at, "
    "task.reminder_sent, task.due_all_day, task.due_local, task.remind_local"
)
TIMEOUT = "SET LOCAL statement_timeout = 5000; "
NEXT_UPDATED_AT = "updated_at=GREATEST(%(now)s, task.updated_at + INTERVAL '1 microsecond')"
OWNED = "task.id = %(task_key)s AND task.user_id = %(owner_id)s"
LIST_LIMIT = 1001  # the service's ceiling of 1,000 rows, plus one to tell whether more follow

LIST = (
    f"{TIMEOUT}SELECT {TASK_COLUMNS} \nFROM task \n"
    f"WHERE task.user_id = %(owner_id)s AND ({SESSION_CHECK}) ORDER BY task.created_at DESC, task.id DESC \n"
    " LIMIT %(page_limit)s"
)
GET = f"{TIMEOUT}SELECT {TASK_COLUMNS} \nFROM task \nWHERE {OWNED} AND ({SESSION_CHECK})"
CREATE_COLUMNS = (
    "user_id, title, description, completed, priority, category, tags, created_at, updated_at, due_date, "
    "recurrence_pattern, remind_at, reminder_sent, due_all_day, due_local, remind_local"
).split(", ")
CREATE_VALUES = ", ".join(
    f"%({name})s{'::JSON' if name == 'tags' else ''} AS anon_{number}"
    for number, name in enumerate(CREATE_COLUMNS, start=1)
)
CREATE = (
    f"{TIMEOUT}INSERT INTO task ({', '.join(CREATE_COLUMNS)}) SELECT {CREATE_VALUES} \nWHERE {SESSION_CHECK} "
    f"RETURNING {TASK_COLUMNS}"
)
TOGGLE = (
    f"{TIMEOUT}UPDATE task SET completed=NOT task.completed, {NEXT_UPDATED_AT} "
    f"WHERE {OWNED} AND task.recurrence_pattern IS NULL AND ({SESSION_CHECK}) RETURNING {TASK_COLUMNS}"
)
# The frontend's edit form sends title, description, priority, due_date and recurrence_pattern (and is_recurring,
# which is derived): with due_date and recurrence_pattern null, todo-api writes it in one statement, which clears
# reminder_sent when the due date moves.
UPDATE_FORM_FIELDS = {  # the form's fields as the update schema loads them
    "title": None,
    "description": None,
    "priority": None,
    "due_date": None,
    "recurrence_pattern": None,
    "due_all_day": False,
    "due_local": None,
}
UPDATE_FORM = (
    f"{TIMEOUT}UPDATE task SET title=%(title)s, description=%(description)s, priority=%(priority)s, "
    f"{NEXT_UPDATED_AT}, due_date=%(due_date)s, recurrence_pattern=%(recurrence_pattern)s, "
    "reminder_sent=CASE WHEN (task.remind_at IS NULL AND %(due_date)s IS DISTINCT FROM task.due_date) THEN false "
    "ELSE task.reminder_sent END, due_all_day=%(due_all_day)s, due_local=%(due_local)s "
    f"WHERE {OWNED} AND ({SESSION_CHECK}) RETURNING {TASK_COLUMNS}"
)
CREATE_DEFAULTS = {
    "title": None,
    "description": None,
    "priority": "medium",
    "category": None,
    "tags": [],
    "due_date": None,
    "recurrence_pattern": None,
    "remind_at": None,
    "due_all_day": False,
    "due_local": None,
    "remind_local": None,
}
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC  # todo-api's JSON provider


def output(task):
    """A task as todo-api shows it (`schemas.task_output`): a wall-clock value replaces its instant."""
    due_local, remind_local = task.pop("due_local"), task.pop("remind_local")
    if due_local is not None:
        task["due_date"] = due_local.isoformat()
    if remind_local is not None:
        task["remind_at"] = remind_local.isoformat()
    task["is_recurring"] = task["recurrence_pattern"] is not None
    return task


def utcnow():
    return datetime.now(UTC).replace(tzinfo=None)


def create_app(database_url=None, connection_factory=None):
    """The ceiling app on `database_url` (default: $DATABASE_URL, a libpq URL).

    `connection_factory` (a psycopg2 connection class) is for tests that watch
    the statements.
    """
    database_url = database_url or os.environ["DATABASE_URL"]
    local = threading.local()
    known = {}  # token digest to user id, of sessions the database confirmed
    app = Flask(__name__)

    def cursor():
        connection = getattr(local, "connection", None)
        if connection is None or connection.closed:
            connection = psycopg2.connect(database_url, connection_factory=connection_factory)
            connection.autocommit = True
            psycopg2.extras.register_default_json(connection, loads=orjson.loads)
            with connection.cursor() as setup:
                setup.execute("SET TIME ZONE 'UTC'")
            local.connection = connection
        return connection.cursor()

    def answer(body, status=200):
        return Response(orjson.dumps(body, option=JSON_OPTIONS), status=status, mimetype="application/json")

    def task_of(cur):
        row = cur.fetchone()
        if row is None:
            return None
        return output(dict(zip((column.name for column in cur.description), row, strict=True)))

    class Caller:
        """The caller: their user id, and their session's digest for the statements to check."""

        def __init__(self, owner, digest, confirmed):
            self.owner, self.digest, self.confirmed = owner, digest, confirmed
            self.key = {"owner_id": owner, "digest": digest}

        def is_live(self, cur):
            """After work that found nothing: whether the session is live (looked up unless just confirmed)."""
            return self.confirmed or lookup(cur, self.digest) == self.owner

    def lookup(cur, digest):
        cur.execute(SESSION_LOOKUP, {"digest": digest})
        row = cur.fetchone()
        if row is None:
            known.pop(digest, None)
            return None
        if len(known) >= KNOWN_SESSIONS:
            known.clear()
        known[digest] = row[0]
        return row[0]

    def caller(cur):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = session_lookup_parameters(token.strip())["digest"]
        owner = known.get(digest)
        if owner is not None:
            return Caller(owner, digest, confirmed=False)
        owner = lookup(cur, digest)
        return owner and Caller(owner, digest, confirmed=True)

    def not_authenticated():
        return answer({"detail": "Not authenticated"}, 401)

    def missing(cur, who):
        return answer({"detail": "Task not found"}, 404) if who.is_live(cur) else not_authenticated()

    def one(cur, who):
        task = task_of(cur)
        return answer({"data": task}) if task is not None else missing(cur, who)

    def authenticated(view):
        def run(**kwargs):
            with cursor() as cur:
                who = caller(cur)
                if who is None:
                    return not_authenticated()
                return view(cur, who, **kwargs)

        run.__name__ = view.__name__
        return run

    @app.get("/health")
    def health():
        return answer({"status": "healthy"})

    @app.get("/api/tasks")
    @authenticated
    def list_tasks(cur, who):
        cur.execute(LIST, {"page_limit": LIST_LIMIT, **who.key})
        names = [column.name for column in cur.description]
        tasks = [output(dict(zip(names, row, strict=True))) for row in cur.fetchall()]
        if not tasks and not who.is_live(cur):
            return not_authenticated()
        return answer({"data": tasks})

    @app.post("/api/tasks")
    @authenticated
    def create_task(cur, who):
        body = orjson.loads(request.get_data())
        now = utcnow()
        values = {name: body.get(name, default) for name, default in CREATE_DEFAULTS.items()}
        values.update(
            tags=orjson.dumps(values["tags"]).decode(),
            user_id=who.owner,
            completed=False,
            reminder_sent=False,
            created_at=now,
            updated_at=now,
        )
        cur.execute(CREATE, {**values, **who.key})
        task = task_of(cur)
        return answer({"data": task}) if task is not None else not_authenticated()

    @app.get("/api/tasks/<int:task_id>")
    @authenticated
    def get_task(cur, who, task_id):
        cur.execute(GET, {"task_key": task_id, **who.key})
        return one(cur, who)

    @app.put("/api/tasks/<int:task_id>")
    @authenticated
    def update_task(cur, who, task_id):
        body = orjson.loads(request.get_data())
        form = {name: body.get(name, default) for name, default in UPDATE_FORM_FIELDS.items()}
        cur.execute(UPDATE_FORM, {**form, "now": utcnow(), "task_key": task_id, **who.key})
        return one(cur, who)

    @app.patch("/api/tasks/<int:task_id>/complete")
    @authenticated
    def toggle_task(cur, who, task_id):
        cur.execute(TOGGLE, {"now": utcnow(), "task_key": task_id, **who.key})
        return one(cur, who)

    return app
