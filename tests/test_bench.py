"""The benchmark's ceiling app (bench/ceiling_app.py) sends Postgres exactly what todo-api sends, and answers alike.

Each request is sent, as the benchmark sends it (the next frontend's headers and bodies), to the service and to
the ceiling app on the same database; the statements each one runs are recorded, one per round trip, with the
names of their parameters. When the service's SQL changes, these tests say which of the ceiling app's statements
to change. The report's table is checked too.
"""

from datetime import datetime

import orjson
import psycopg2.extensions
import pytest
from sqlalchemy import event

from bench import ceiling_app, run
from support import base_config, delete_session, truncate_postgres
from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.db.connections import get_engine

CREATE_BODY = (
    b'{"title":"Load task 1-1","description":"","priority":"high","due_date":null,"is_recurring":false,'
    b'"recurrence_pattern":null,"tags":[]}'
)
UPDATE_BODY = (
    b'{"title":"Renamed 1-2","description":"","priority":"low","due_date":null,"is_recurring":false,'
    b'"recurrence_pattern":null}'
)


class RecordingCursor(psycopg2.extensions.cursor):
    def execute(self, query, vars=None):
        self.connection.statements.append((query, sorted(vars or {})))
        return super().execute(query, vars)


class RecordingConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that notes every statement its cursors run."""

    statements = None
    opened = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingConnection.opened.append(self)

    def cursor(self, *args, **kwargs):
        kwargs.setdefault("cursor_factory", RecordingCursor)
        return super().cursor(*args, **kwargs)


@pytest.fixture
def service(postgres_url):
    app = create_app(base_config(postgres_url))
    yield app
    truncate_postgres(get_engine(app))
    get_engine(app).dispose()


@pytest.fixture
def token(service):
    with get_engine(service).begin() as connection:
        return create_user_session(connection, service.config, "bench@example.com")


@pytest.fixture
def cold_headers(token):
    """A session neither the service nor the ceiling app has seen."""
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


@pytest.fixture
def headers(service, cold_headers):
    """A session the service has confirmed (the ceiling fixture confirms it in the ceiling app)."""
    assert service.test_client().get("/api/tasks", headers=cold_headers).status_code == 200
    return cold_headers


@pytest.fixture
def statements():
    RecordingConnection.statements = []
    yield RecordingConnection.statements
    RecordingConnection.statements = None
    while RecordingConnection.opened:
        RecordingConnection.opened.pop().close()


@pytest.fixture
def cold_ceiling(postgres_url, statements):
    """The ceiling app's test client, before its first connection."""
    return ceiling_app.create_app(postgres_url, connection_factory=RecordingConnection).test_client()


@pytest.fixture
def ceiling(cold_ceiling, statements, headers):
    """The ceiling app's test client, connected."""
    assert cold_ceiling.get("/api/tasks", headers=headers).status_code == 200
    statements.clear()
    return cold_ceiling


@pytest.fixture
def service_statements(service):
    """The statements the service runs, as the ceiling app's recorder sees them."""
    recorded = []

    def record(_connection, _cursor, statement, parameters, *_args):
        recorded.append((statement, sorted(parameters or {})))

    event.listen(get_engine(service), "before_cursor_execute", record)
    yield recorded
    event.remove(get_engine(service), "before_cursor_execute", record)


def send(client, method, path, headers, body=None):
    return client.open(path, method=method, headers=headers, data=body)


def compare(service, ceiling, statements, service_statements, headers, method, path, body=None):
    """Send one request to both; assert they ran the same statements; return both responses."""
    service_statements.clear()
    from_service = send(service.test_client(), method, path, headers, body)
    sent_by_service = list(service_statements)
    statements.clear()
    from_ceiling = send(ceiling, method, path, headers, body)
    assert statements == sent_by_service
    return from_service, from_ceiling


def without(task, *names):
    return {name: value for name, value in task.items() if name not in names}


def test_the_ceiling_sets_the_time_zone_once_per_connection(cold_ceiling, statements, headers):
    assert cold_ceiling.get("/api/tasks", headers=headers).status_code == 200
    assert cold_ceiling.get("/api/tasks", headers=headers).status_code == 200
    assert [statement for statement, _ in statements].count("SET TIME ZONE 'UTC'") == 1
    assert statements[0] == ("SET TIME ZONE 'UTC'", [])


def test_list_and_get_run_the_same_statements_and_answer_the_same_bytes(
    service, ceiling, statements, service_statements, headers
):
    for number in range(3):
        body = {"title": f"Task {number}", "priority": "high", "tags": ["a", "b"][:number]}
        assert service.test_client().post("/api/tasks", headers=headers, json=body).status_code == 200
    first = service.test_client().get("/api/tasks", headers=headers).get_json()["data"][-1]["id"]

    for path in ["/api/tasks", f"/api/tasks/{first}"]:
        from_service, from_ceiling = compare(service, ceiling, statements, service_statements, headers, "GET", path)
        assert (from_ceiling.status_code, from_ceiling.get_data()) == (200, from_service.get_data())
        assert from_ceiling.mimetype == "application/json"
    assert len(orjson.loads(from_ceiling.get_data())["data"]) == 16  # every field of a task, is_recurring included


def test_writes_run_the_same_statements_and_answer_the_same_tasks(
    service, ceiling, statements, service_statements, headers
):
    from_service, from_ceiling = compare(
        service, ceiling, statements, service_statements, headers, "POST", "/api/tasks", CREATE_BODY
    )
    created_by_service, created_by_ceiling = from_service.get_json()["data"], from_ceiling.get_json()["data"]
    assert (from_service.status_code, from_ceiling.status_code) == (200, 200)
    assert list(created_by_ceiling) == list(created_by_service)
    assert without(created_by_ceiling, "id", "created_at", "updated_at") == without(
        created_by_service, "id", "created_at", "updated_at"
    )
    assert created_by_ceiling["id"] == created_by_service["id"] + 1

    task = created_by_service["id"]
    from_service, from_ceiling = compare(
        service, ceiling, statements, service_statements, headers, "PUT", f"/api/tasks/{task}", UPDATE_BODY
    )
    assert [statement for statement, _ in statements] == [ceiling_app.UPDATE_FORM]
    assert (from_service.status_code, from_ceiling.status_code) == (200, 200)
    updated_by_service, updated_by_ceiling = from_service.get_json()["data"], from_ceiling.get_json()["data"]
    assert without(updated_by_ceiling, "updated_at") == without(updated_by_service, "updated_at")
    assert (updated_by_ceiling["title"], updated_by_ceiling["priority"]) == ("Renamed 1-2", "low")
    assert datetime.fromisoformat(updated_by_ceiling["updated_at"]) > datetime.fromisoformat(
        updated_by_service["updated_at"]
    )

    from_service, from_ceiling = compare(
        service, ceiling, statements, service_statements, headers, "PATCH", f"/api/tasks/{task}/complete"
    )
    assert (from_service.status_code, from_ceiling.status_code) == (200, 200)
    assert (from_service.get_json()["data"]["completed"], from_ceiling.get_json()["data"]["completed"]) == (True, False)
    assert without(from_ceiling.get_json()["data"], "updated_at", "completed") == without(
        from_service.get_json()["data"], "updated_at", "completed"
    )


def test_each_request_is_one_statement_once_the_session_is_known(
    service, ceiling, statements, service_statements, headers
):
    """The hot path: one statement per request, the session checked in it."""
    created = service.test_client().post("/api/tasks", headers=headers, data=CREATE_BODY).get_json()["data"]
    for method, path, statement in [
        ("GET", "/api/tasks", ceiling_app.LIST),
        ("GET", f"/api/tasks/{created['id']}", ceiling_app.GET),
        ("PATCH", f"/api/tasks/{created['id']}/complete", ceiling_app.TOGGLE),
        ("PUT", f"/api/tasks/{created['id']}", ceiling_app.UPDATE_FORM),
        ("POST", "/api/tasks", ceiling_app.CREATE),
    ]:
        body = {"POST": CREATE_BODY, "PUT": UPDATE_BODY}.get(method)
        compare(service, ceiling, statements, service_statements, headers, method, path, body)
        assert [sent for sent, _ in statements] == [statement]


def test_a_new_session_is_looked_up_first_and_a_missing_task_after(
    service, cold_ceiling, statements, service_statements, cold_headers
):
    assert cold_ceiling.get("/api/tasks").status_code == 401  # connects, and sets the time zone
    from_service, from_ceiling = compare(
        service, cold_ceiling, statements, service_statements, cold_headers, "GET", "/api/tasks"
    )
    assert [statement for statement, _ in statements] == [ceiling_app.SESSION_LOOKUP, ceiling_app.LIST]
    assert (from_ceiling.status_code, from_ceiling.get_data()) == (200, from_service.get_data())
    from_service, from_ceiling = compare(
        service, cold_ceiling, statements, service_statements, cold_headers, "GET", "/api/tasks/123456"
    )
    assert [statement for statement, _ in statements] == [ceiling_app.GET, ceiling_app.SESSION_LOOKUP]  # 404 or 401?
    assert (from_service.status_code, from_ceiling.status_code) == (404, 404)


def test_a_signed_out_session_is_refused_by_both_on_the_next_request(
    service, ceiling, statements, service_statements, headers, token
):
    delete_session(service, token)
    # The work, which finds nothing, then the lookup; the session is then forgotten, and only looked up.
    for method, path, body, sent_statements in [
        ("GET", "/api/tasks", None, [ceiling_app.LIST, ceiling_app.SESSION_LOOKUP]),
        ("POST", "/api/tasks", CREATE_BODY, [ceiling_app.SESSION_LOOKUP]),
    ]:
        from_service, from_ceiling = compare(
            service, ceiling, statements, service_statements, headers, method, path, body
        )
        assert [statement for statement, _ in statements] == sent_statements
        assert (from_service.status_code, from_ceiling.status_code) == (401, 401)
        assert from_service.get_json() == from_ceiling.get_json() == {"detail": "Not authenticated"}


def test_the_ceiling_refuses_what_the_service_refuses(service, ceiling, headers):
    for request_headers in [{"Authorization": "Bearer not-a-session"}, {}]:
        response = ceiling.get("/api/tasks", headers=request_headers)
        assert (response.status_code, response.get_json()) == (401, {"detail": "Not authenticated"})
    response = ceiling.get("/api/tasks/123456", headers=headers)
    assert (response.status_code, response.get_json()) == (404, {"detail": "Task not found"})
    response = ceiling.patch("/api/tasks/123456/complete", headers=headers)
    assert (response.status_code, response.get_json()) == (404, {"detail": "Task not found"})


def result(rps, p50_ms, p99_ms):
    return {"rps": rps, "p50_us": p50_ms * 1000, "p99_us": p99_ms * 1000}


def servers(*names):
    return [run.Server(name, "http://127.0.0.1:1", name, "postgresql://unused") for name in names]


def test_the_table_gives_medians_ratios_and_marks_what_was_not_measured():
    results = {
        ("health", "todo-api"): [result(6000, 2, 6)],
        ("list", "todo-api"): [result(1500, 14, 26), result(1400, 15, 30), result(1600, 13, 25)],
        ("list", "reference"): [result(800, 20, 150), result(700, 21, 160), result(750, 22, 140)],
        ("list", "ceiling"): [result(3000, 5, 10), result(2900, 6, 11), result(3100, 5, 9)],
        ("get", "todo-api"): [result(1700, 9, 19)],
        ("get", "ceiling"): [result(3400, 4, 8)],
    }
    lines = run.results_table(["health", "list", "get"], results, servers("todo-api", "reference", "ceiling"))
    assert lines[2:] == [
        "| `health` | 6,000 | 2.0 | 6.0 | - | - | - | - | - | - |",
        "| `list` | 1,500 | 14.0 | 26.0 | 750 | 21.0 | 150.0 | 2.00x | 3,000 | 50% |",
        "| `get` | 1,700 | 9.0 | 19.0 | n/a | n/a | n/a | n/a | 3,400 | 50% |",
    ]
    without_reference = run.results_table(["get"], results, servers("todo-api", "ceiling"))
    assert without_reference[2:] == ["| `get` | 1,700 | 9.0 | 19.0 | - | - | - | - | 3,400 | 50% |"]


def test_the_cpu_table_gives_the_median_cpu_time_per_request_of_each_server():
    def cpu(app_us, database_us):
        return {"app_cpu_us": app_us, "database_cpu_us": database_us}

    results = {
        ("list", "todo-api"): [cpu(700, 300), cpu(650, 310), cpu(1200, 290)],
        ("list", "ceiling"): [cpu(500, 300)],
        ("get", "todo-api"): [cpu(600, 250)],
    }
    assert run.cpu_table(["list", "get"], results, servers("todo-api", "ceiling")) == [
        "| scenario | todo-api µs | ceiling µs |",
        "|---|---:|---:|",
        "| `list` | 700 (300) | 500 (300) |",
        "| `get` | 600 (250) | - |",
    ]


def test_repeats_rotate_the_order_of_the_servers():
    names = ["todo-api", "reference", "ceiling"]
    assert [run.rotated(names, repeat) for repeat in range(4)] == [
        ["todo-api", "reference", "ceiling"],
        ["reference", "ceiling", "todo-api"],
        ["ceiling", "todo-api", "reference"],
        ["todo-api", "reference", "ceiling"],
    ]
