"""Property-based fuzzing of every operation in the OpenAPI document, on Postgres.

Schemathesis generates requests from the document, valid and invalid ones
(its coverage and fuzzing phases), sends them to the app in-process with a
real session token, and checks each response: never a 5xx, a status code the
document lists, the content type it names, and a body its schema accepts.

The fuzzing user is its own user with its own session; its tasks, settings and
push subscriptions are deleted afterwards, so other tests never see them. Runs are derandomized so CI sees
the same cases every time; set FUZZ_SEED (any value) and FUZZ_EXAMPLES (per operation, default 80) to explore more.
"""

import os
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import delete, select

from support import FULL_TASK, base_config, user_id_of
from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.db.connections import get_engine
from todo_api.db.tables import push_subscription, task, user, user_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", 80))  # fuzzing phase; coverage adds its own
MINIMUM_CASES = 1000
FUZZ_EMAIL = "fuzz@example.com"

pytestmark = pytest.mark.postgres  # on the run's Postgres database

# Tasks of every shape for the generated requests to act on: the ids that
# valid requests name are mapped onto the fuzzing user's tasks, so updates,
# completions and deletions reach real rows (recurring ones included) instead
# of nearly always answering 404; invalid requests keep their generated ids.
SEED_TASKS = [
    {"title": "plain"},
    FULL_TASK,
    {"title": "daily", "recurrence_pattern": "daily", "due_date": "2026-03-01T00:00:00+01:00"},
    {
        "title": "monthly",
        "recurrence_pattern": "monthly",
        "due_date": "2028-02-29T12:00:00Z",
        "remind_at": "2028-02-28T12:00:00Z",
    },
    {"title": "yearly", "recurrence_pattern": "yearly", "due_date": "2026-12-31T23:00:00-05:00"},
    {"title": "weekly", "recurrence_pattern": "weekly", "due_date": "1900-01-01T00:00:00Z"},
    {"title": "all day", "recurrence_pattern": "monthly", "due_date": "2026-01-31", "remind_at": "2026-01-30T18:00"},
    {"title": "wall clock", "recurrence_pattern": "daily", "due_date": "2026-03-28T02:30"},
]

# What the run saw, per operation: how many cases, and their status codes.
cases_run = Counter()
statuses_seen = defaultdict(Counter)

# The document does not depend on the database: load it once, at collection.
schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(base_config("sqlite://")))
OPERATIONS = {result.ok().label for result in schema.get_all_operations()}


@pytest.fixture(scope="module")
def fuzz_app(postgres_url):
    """The app on the run's Postgres database, with its own user, session and tasks."""
    # The fuzzing user sends some 2,000 requests in well under a minute: over the per-user limit.
    app = create_app(base_config(postgres_url, RATELIMIT_PER_USER="100000 per minute"))
    with get_engine(app).begin() as connection:
        token = create_user_session(connection, app.config, FUZZ_EMAIL, timedelta(hours=1))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for fields in SEED_TASKS:
        assert client.post("/api/tasks", headers=headers, json=fields).status_code == 200
    app.extensions["fuzz"] = {"headers": headers, "user_id": user_id_of(app, token)}
    yield app
    with get_engine(app).begin() as connection:
        for table in (task, push_subscription, user_settings):
            connection.execute(delete(table).where(table.c.user_id == app.extensions["fuzz"]["user_id"]))
        connection.execute(delete(user).where(user.c.email == FUZZ_EMAIL))  # and its session, by cascade
    get_engine(app).dispose()


def target_task(app, method, generated_id):
    """One of the fuzzing user's tasks, picked by the generated id; a DELETE gets a task of its own,
    so the seeded tasks last the whole run."""
    if method == "DELETE":
        response = app.test_client().post("/api/tasks", headers=app.extensions["fuzz"]["headers"], json={"title": "x"})
        return response.get_json()["data"]["id"]
    with get_engine(app).connect() as connection:
        owned = (
            connection.execute(
                select(task.c.id).where(task.c.user_id == app.extensions["fuzz"]["user_id"]).order_by(task.c.id)
            )
            .scalars()
            .all()
        )
    return owned[generated_id % len(owned)]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize="FUZZ_SEED" not in os.environ,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api(case, fuzz_app):
    task_id = (case.path_parameters or {}).get("task_id")
    if isinstance(task_id, int) and case.meta.generation.mode.is_positive:
        case.path_parameters["task_id"] = target_task(fuzz_app, case.method, task_id)
    response = case.call_and_validate(app=fuzz_app, headers=fuzz_app.extensions["fuzz"]["headers"], checks=CHECKS)
    cases_run[case.operation.label] += 1
    statuses_seen[case.operation.label][response.status_code] += 1


def test_fuzzing_covered_every_operation():
    """Enough cases, and a success on every operation: a run that only ever
    met 401s or 404s would pass every check above and prove nothing."""
    if set(cases_run) != OPERATIONS:
        pytest.skip("runs after the whole of test_api")
    print(
        f"fuzzing: {sum(cases_run.values())} cases;",
        "; ".join(f"{label}: {dict(statuses_seen[label])}" for label in sorted(statuses_seen)),
    )
    assert sum(cases_run.values()) >= MINIMUM_CASES
    assert {label for label, statuses in statuses_seen.items() if statuses[200]} == OPERATIONS
