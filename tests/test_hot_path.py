"""The task routes' hot path: one round trip per request, the session checked in the statement that does the work.

A session the worker has confirmed once is remembered (token digest to user id) as the key of the rate limits and
the owner the statements filter by; every statement checks the session again, so a signed-out or expired session is
refused on the very next request, and whatever else a request would be refused for, a dead session is 401 first.
"""

import pytest
from sqlalchemy import select

from support import StatementLog, delete_session, expire_session, fetch, user_id_of
from test_subscriptions import ENDPOINT, OTHER_ENDPOINT, subscription
from todo_api.auth.sessions import get_sessions
from todo_api.db.connections import get_engine
from todo_api.db.tables import SHOWN_TASK_COLUMNS, idempotency_key, push_subscription, user_settings
from todo_api.db.tables import task as task_table
from todo_api.db.token_digest import token_digest
from todo_api.tasks.routes import list_query
from todo_api.tasks.schemas import TaskSchema, filter_sort_query_schema, list_query_schema, task_output

NOT_AUTHENTICATED = {"detail": "Not authenticated"}


@pytest.fixture
def statements(app):
    log = StatementLog(app)
    yield log.statements
    log.close()


def hot_requests(task_id):
    """(method, path, JSON body, extra headers, the one statement) of every hot route."""
    return [
        ("GET", "/api/tasks", None, {}, "SELECT"),
        ("GET", f"/api/tasks/{task_id}", None, {}, "SELECT"),
        ("POST", "/api/tasks", {"title": "New"}, {}, "INSERT"),
        ("PUT", f"/api/tasks/{task_id}", {"title": "Renamed", "priority": "low"}, {}, "UPDATE"),
        ("PATCH", f"/api/tasks/{task_id}/complete", None, {}, "UPDATE"),
        ("PATCH", f"/api/tasks/{task_id}/complete", {"completed": False}, {}, "UPDATE"),
        ("GET", "/api/tasks?status=pending&sort_by=title", None, {}, "SELECT"),
        ("DELETE", f"/api/tasks/{task_id}", None, {"If-Match": "current"}, "DELETE"),
    ]


def test_each_hot_route_is_one_statement_once_the_session_is_known(client, auth, create_task, statements):
    created = create_task()
    for method, path, body, headers, statement in hot_requests(created["id"]):
        if headers.get("If-Match") == "current":
            headers = {"If-Match": fetch(client, auth, created["id"])[1]}
        statements.clear()
        response = client.open(path, method=method, headers={**auth, **headers}, json=body)
        assert response.status_code == 200, (method, path, response.get_json())
        assert statements == [statement], (method, path)


def test_a_new_session_is_looked_up_first_then_remembered(app, client, auth, token, statements):
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert statements == ["SELECT", "SELECT"]  # the lookup, then the list (empty: the session was just confirmed)
    assert get_sessions(app).known.get(token_digest(token)) == user_id_of(app, token)
    statements.clear()
    response = client.get("/api/tasks", headers=auth)
    assert (response.status_code, response.get_json(), statements) == (200, {"data": []}, ["SELECT", "SELECT"])
    statements.clear()
    assert client.post("/api/tasks", headers=auth, json={"title": "x"}).status_code == 200
    assert statements == ["INSERT"]


@pytest.mark.parametrize("end_session", [delete_session, expire_session])
def test_a_remembered_session_that_ended_is_refused_on_the_next_request_and_forgotten(
    app, client, auth, token, create_task, end_session
):
    created = create_task()
    end_session(app, token)
    for method, path, body in [
        ("GET", "/api/tasks", None),
        ("GET", f"/api/tasks/{created['id']}", None),
        ("POST", "/api/tasks", {"title": "x"}),
        ("PUT", f"/api/tasks/{created['id']}", {"title": "y"}),
        ("PUT", f"/api/tasks/{created['id']}", {"due_date": None, "recurrence_pattern": None}),
        ("PATCH", f"/api/tasks/{created['id']}/complete", None),
        ("DELETE", f"/api/tasks/{created['id']}", None),
    ]:
        get_sessions(app).known.remember(token_digest(token), created["user_id"])
        response = client.open(path, method=method, headers=auth, json=body)
        assert (response.status_code, response.get_json()) == (401, NOT_AUTHENTICATED), (method, path)
        assert get_sessions(app).known.get(token_digest(token)) is None
    with app.app_context(), get_engine(app).connect() as connection:
        rows = connection.execute(select(task_table)).all()
    assert [(row.title, row.completed) for row in rows] == [("A task", False)]  # nothing was written


@pytest.mark.parametrize(
    "method, path, body, headers",
    [
        ("POST", "/api/tasks", {"priority": "urgent"}, {}),  # 422
        ("PUT", "/api/tasks/{id}", {"title": ""}, {}),  # 422
        ("PATCH", "/api/tasks/{id}/complete", {"completed": "maybe"}, {}),  # 422
        ("GET", "/api/tasks?limit=0", None, {}),  # 422
        ("GET", "/api/tasks/999999", None, {}),  # 404
        ("GET", "/api/tasks/99999999999", None, {}),  # 404, not even looked up
        ("DELETE", "/api/tasks/{id}", None, {"If-Match": '"1-1"'}),  # 412
        ("PUT", "/api/tasks/{id}", None, {"Content-Type": "text/plain"}),  # 415
        ("GET", "/api/tasks/search", None, {}),  # 422: no keyword
        ("GET", "/api/tasks/filter-sort?sort_by=size", None, {}),  # 422
        ("PATCH", "/api/tasks/999999/mark-reminder-sent", None, {}),  # 404
        ("POST", "/api/tasks", {"title": "x"}, {"Idempotency-Key": "k" * 256}),  # 422
        ("PUT", "/api/settings", {"time_zone": "Mars/Olympus_Mons"}, {}),  # 422
        ("POST", "/api/notifications/subscribe", {"endpoint": "http://127.0.0.1/push"}, {}),  # 422
    ],
)
def test_a_dead_remembered_session_is_401_before_anything_else(
    app, client, auth, token, create_task, method, path, body, headers
):
    created = create_task()
    delete_session(app, token)
    get_sessions(app).known.remember(token_digest(token), created["user_id"])
    path = path.format(id=created["id"])
    if body is None and "Content-Type" in headers:
        response = client.open(path, method=method, headers={**auth, **headers}, data="title")
    else:
        response = client.open(path, method=method, headers={**auth, **headers}, json=body)
    assert (response.status_code, response.get_json()) == (401, NOT_AUTHENTICATED)


def test_a_live_remembered_session_gets_the_same_refusals_as_before(client, auth, create_task):
    created = create_task()
    response = client.get("/api/tasks/999999", headers=auth)
    assert (response.status_code, response.get_json()) == (404, {"detail": "Task not found"})
    response = client.delete(f"/api/tasks/{created['id']}", headers={**auth, "If-Match": '"1-1"'})
    assert response.status_code == 412
    response = client.post("/api/tasks", headers=auth, json={"priority": "urgent"})
    assert response.status_code == 422


def test_another_users_remembered_id_finds_nothing(app, client, auth, token, other_auth, create_task):
    """The remembered user id is only bound as the owner: the statement checks it is the session's own."""
    theirs = create_task(headers=other_auth)
    get_sessions(app).known.remember(token_digest(token), theirs["user_id"])
    response = client.get(f"/api/tasks/{theirs['id']}", headers=auth)
    assert (response.status_code, response.get_json()) == (401, NOT_AUTHENTICATED)
    assert client.get(f"/api/tasks/{theirs['id']}", headers=auth).status_code == 404  # looked up: the right user


def test_the_rate_limit_is_keyed_by_the_remembered_user(make_app, new_session):
    app = make_app(RATELIMIT_PER_USER="3 per minute")
    client = app.test_client()
    first, second = ({"Authorization": f"Bearer {new_session('alice@example.com')}"} for _ in range(2))
    assert [client.get("/api/tasks", headers=first).status_code for _ in range(2)] == [200, 200]
    assert client.get("/api/tasks", headers=second).status_code == 200  # the same user, another session
    response = client.post("/api/tasks", headers=second, json={"title": "x"})
    assert response.status_code == 429
    with app.app_context(), get_engine(app).connect() as connection:
        assert connection.execute(select(task_table)).all() == []


def test_the_fast_paths_answer_what_the_schema_dumps(app, client, auth, create_task):
    created = create_task(
        description="d", tags=["a"], due_date="2026-07-01T09:00", remind_at="2026-07-01T08:00:00Z", priority="high"
    )
    responses = [
        client.get("/api/tasks", headers=auth).get_json()["data"][0],
        client.get(f"/api/tasks/{created['id']}", headers=auth).get_json()["data"],
        client.patch(f"/api/tasks/{created['id']}/complete", headers=auth).get_json()["data"],
    ]
    with app.app_context(), get_engine(app).connect() as connection:
        row = connection.execute(select(*SHOWN_TASK_COLUMNS)).one()
    expected = app.json.loads(app.json.dumps(TaskSchema().dump(row)))
    assert app.json.loads(app.json.dumps(task_output(row))) == expected
    assert responses[2] == expected
    assert without(responses[0], "completed", "updated_at") == without(expected, "completed", "updated_at")
    assert responses[0] == responses[1]
    assert created == responses[0]


def without(task, *names):
    return {name: value for name, value in task.items() if name not in names}


# -- A PUT of the edit form ------------------------------------------------------------

FORM = {"description": "", "priority": "low", "is_recurring": False}


def put(client, auth, task_id, body):
    response = client.put(f"/api/tasks/{task_id}", headers=auth, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def mark_sent(client, auth, task_id):
    assert client.patch(f"/api/tasks/{task_id}/mark-reminder-sent", headers=auth).status_code == 200


def test_the_edit_form_turning_recurrence_off_is_one_statement(client, auth, create_task, statements):
    recurring = create_task(due_date="2026-07-01T09:00:00Z", recurrence_pattern="weekly")
    statements.clear()
    body = {**FORM, "title": "Once", "due_date": None, "recurrence_pattern": None}
    updated = put(client, auth, recurring["id"], body)
    assert statements == ["UPDATE"]
    assert (updated["title"], updated["due_date"], updated["recurrence_pattern"], updated["is_recurring"]) == (
        "Once",
        None,
        None,
        False,
    )


def test_the_edit_form_with_an_instant_is_one_statement_and_moves_the_reminder(client, auth, create_task, statements):
    task = create_task(due_date="2026-07-01T09:00:00Z")
    mark_sent(client, auth, task["id"])
    for due_date, sent in [("2026-07-01T09:00:00Z", True), ("2026-07-02T09:00:00Z", False)]:
        statements.clear()
        body = {**FORM, "title": "t", "due_date": due_date, "recurrence_pattern": None}
        assert put(client, auth, task["id"], body)["reminder_sent"] is sent, due_date
        assert statements == ["UPDATE"]


def test_a_reminder_of_its_own_moves_only_when_it_changes(client, auth, create_task):
    task = create_task(due_date="2026-07-01T09:00:00Z", remind_at="2026-07-01T08:00:00Z")
    mark_sent(client, auth, task["id"])
    # The due date moves, the reminder stays: still sent.
    body = {**FORM, "title": "t", "due_date": "2026-07-03T09:00:00Z", "recurrence_pattern": None}
    assert put(client, auth, task["id"], body)["reminder_sent"] is True
    assert put(client, auth, task["id"], {"remind_at": "2026-07-01T08:00:00Z"})["reminder_sent"] is True
    assert put(client, auth, task["id"], {"remind_at": "2026-07-03T08:00:00Z"})["reminder_sent"] is False
    mark_sent(client, auth, task["id"])
    # Without a reminder of its own, the due date is the reminder.
    assert put(client, auth, task["id"], {"remind_at": None})["reminder_sent"] is False
    mark_sent(client, auth, task["id"])
    assert put(client, auth, task["id"], {"due_date": None})["reminder_sent"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"due_date": "2026-07-01T09:00", "recurrence_pattern": None},  # on the wall clock: needs the zone
        {"due_date": "2026-07-01T09:00:00Z", "recurrence_pattern": "daily"},  # recurring: the rules span fields
    ],
)
def test_a_put_that_needs_the_zone_or_sets_a_recurrence_keeps_the_transaction(
    client, auth, create_task, statements, body
):
    task = create_task()
    statements.clear()
    put(client, auth, task["id"], {**FORM, "title": "t", **body})
    assert statements[0] == "BEGIN"


def test_a_form_that_keeps_the_recurrence_of_a_recurring_task_takes_the_transaction(
    client, auth, create_task, statements
):
    recurring = create_task(due_date="2026-07-01T09:00:00Z", recurrence_pattern="weekly")
    statements.clear()
    response = client.put(f"/api/tasks/{recurring['id']}", headers=auth, json={"due_date": None})
    assert (response.status_code, statements[:2]) == (422, ["UPDATE", "BEGIN"])  # recurring needs a due date


@pytest.mark.parametrize("schema", [list_query_schema, filter_sort_query_schema], ids=["list", "filter-sort"])
def test_a_list_without_a_query_string_gets_what_its_schema_loads_from_none(app, schema):
    with app.test_request_context("/api/tasks"):
        assert list_query(schema) == schema.load({})
        assert list_query(schema) is list_query(schema)  # loaded once


def test_a_search_without_a_query_string_is_still_refused_by_its_schema(client, auth):
    response = client.get("/api/tasks/search", headers=auth)
    assert response.status_code == 422
    assert response.get_json() == {
        "detail": "Validation failed",
        "errors": {"keyword": ["Missing data for required field."]},
    }


# -- Every route of a user's data checks the session in the same way --------------------


def test_every_route_of_a_known_session_costs_no_lookup(app, client, auth, create_task, statements, backend):
    created = create_task()
    assert client.post("/api/notifications/subscribe", headers=auth, json=subscription()).status_code == 200
    search = ["SELECT"] if backend == "sqlite" else ["BEGIN;", "SELECT", "COMMIT"]  # BEGIN; set the word
    # A subscribe keeps the user's cap in its transaction (on Postgres, the user's turn first: an advisory lock).
    turn = [] if backend == "sqlite" else ["SELECT"]
    subscribe = ["BEGIN", *turn, "INSERT", "DELETE", "COMMIT"]
    for method, path, body, expected in [
        ("GET", "/api/tasks/filter-sort", None, ["SELECT"]),
        ("GET", "/api/tasks/search?keyword=task", None, search),
        ("PATCH", f"/api/tasks/{created['id']}/mark-reminder-sent", None, ["UPDATE"]),
        ("GET", "/api/settings", None, ["SELECT"]),
        ("POST", "/api/notifications/subscribe", subscription(OTHER_ENDPOINT), subscribe),
        ("DELETE", "/api/notifications/unsubscribe", {"endpoint": ENDPOINT}, ["DELETE"]),
    ]:
        statements.clear()
        response = client.open(path, method=method, headers=auth, json=body)
        assert response.status_code == 200, (method, path, response.get_json())
        assert statements == expected, (method, path)


TABLES = [task_table, idempotency_key, user_settings, push_subscription]


@pytest.mark.parametrize("end_session", [delete_session, expire_session])
def test_a_remembered_session_that_ended_is_refused_on_every_route_and_changes_nothing(
    app, client, auth, token, create_task, end_session
):
    created = create_task()
    keyed = client.post("/api/tasks", headers={**auth, "Idempotency-Key": "k"}, json={"title": "Keyed"})
    assert keyed.status_code == 200
    assert client.post("/api/notifications/subscribe", headers=auth, json=subscription()).status_code == 200
    with get_engine(app).connect() as connection:
        before = {table.name: connection.execute(select(table)).all() for table in TABLES}
    end_session(app, token)
    for method, path, body, headers in [
        ("GET", "/api/tasks/filter-sort", None, {}),
        ("GET", "/api/tasks/search?keyword=task", None, {}),
        ("PATCH", f"/api/tasks/{created['id']}/mark-reminder-sent", None, {}),
        ("POST", "/api/tasks", {"title": "New"}, {"Idempotency-Key": "new"}),
        ("POST", "/api/tasks", {"title": "Keyed"}, {"Idempotency-Key": "k"}),  # no replay either
        ("GET", "/api/settings", None, {}),
        ("PUT", "/api/settings", {"time_zone": "Europe/Berlin"}, {}),
        ("POST", "/api/notifications/subscribe", subscription(OTHER_ENDPOINT), {}),
        ("DELETE", "/api/notifications/unsubscribe", {"endpoint": ENDPOINT}, {}),
        ("DELETE", "/api/notifications/unsubscribe", None, {}),
    ]:
        get_sessions(app).known.remember(token_digest(token), created["user_id"])
        response = client.open(path, method=method, headers={**auth, **headers}, json=body)
        assert (response.status_code, response.get_json()) == (401, NOT_AUTHENTICATED), (method, path)
        assert get_sessions(app).known.get(token_digest(token)) is None
    with get_engine(app).connect() as connection:
        assert {table.name: connection.execute(select(table)).all() for table in TABLES} == before


def test_an_empty_answer_to_a_dead_remembered_session_is_401(app, client, auth, token, create_task):
    """An empty list, or an unsubscribe that removed nothing, is answered only once the session is confirmed."""
    user_id = create_task()["user_id"]
    delete_session(app, token)
    for method, path in [
        ("GET", "/api/tasks?status=completed"),
        ("GET", "/api/tasks/search?keyword=nothing"),
        ("DELETE", "/api/notifications/unsubscribe"),
    ]:
        get_sessions(app).known.remember(token_digest(token), user_id)
        response = client.open(path, method=method, headers=auth)
        assert (response.status_code, response.get_json()) == (401, NOT_AUTHENTICATED), (method, path)
