"""`POST /api/tasks/batch`: many writes in one transaction, all or nothing, each answered as its single route."""

import pytest
from sqlalchemy import func, select

from support import delete_session
from todo_api.db.connections import get_engine
from todo_api.db.tables import task

NOT_FOUND = "Task not found"
STALE = "The task has changed since it was read (If-Match does not match its ETag); fetch it again"


def batch(client, auth, *operations, headers=None):
    return client.post("/api/tasks/batch", headers={**auth, **(headers or {})}, json={"operations": list(operations)})


def listed(client, auth):
    return client.get("/api/tasks", headers=auth).get_json()["data"]


def create(title, temp_id=None, **fields):
    return {"op": "create", "fields": {"title": title, **fields}, **({"temp_id": temp_id} if temp_id else {})}


def test_a_batch_answers_each_operation_as_its_route_does(client, auth, create_task):
    existing = create_task(title="existing")
    response = batch(
        client,
        auth,
        create("first", "t1"),
        {"op": "update", "id": "t1", "fields": {"title": "first, renamed"}},
        {"op": "complete", "id": existing["id"], "completed": True},
        create("second", "t2"),
        {"op": "delete", "id": "t2"},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"data", "temp_ids", "sync_token"}
    first_id = body["temp_ids"]["t1"]
    assert set(body["temp_ids"]) == {"t1", "t2"}
    assert [result.get("title") for result in body["data"][:4]] == ["first", "first, renamed", "existing", "second"]
    assert body["data"][4] == {"id": body["temp_ids"]["t2"], "deleted": True}
    assert body["data"][2]["completed"] is True
    assert {task["id"]: task for task in listed(client, auth)} == {
        first_id: body["data"][1],
        existing["id"]: body["data"][2],
    }
    single = client.get(f"/api/tasks/{first_id}", headers=auth).get_json()["data"]
    assert single == body["data"][1]


def test_completing_a_recurring_task_in_a_batch_shows_its_next_occurrence(client, auth, create_task):
    weekly = create_task(title="weekly", due_date="2030-01-07T09:00:00Z", recurrence_pattern="weekly")
    body = batch(client, auth, {"op": "complete", "id": weekly["id"], "completed": True}).get_json()
    result = body["data"][0]
    assert result["completed"] is True
    assert result["next_task"]["due_date"] == "2030-01-14T09:00:00+00:00"
    assert len(listed(client, auth)) == 2


def test_a_hundred_operations_are_taken_and_a_hundred_and_one_refused(client, auth):
    response = batch(client, auth, *(create(f"task {n}") for n in range(100)))
    assert response.status_code == 200
    assert len(response.get_json()["data"]) == 100
    refused = batch(client, auth, *(create(f"more {n}") for n in range(101)))
    assert refused.status_code == 422
    assert refused.get_json() == {
        "detail": "Validation failed",
        "errors": {"operations": ["Length must be between 1 and 100."]},
    }
    assert len(client.get("/api/tasks", headers=auth, query_string={"limit": 200}).get_json()["data"]) == 100


def test_an_empty_batch_is_refused(client, auth):
    response = batch(client, auth)
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"operations": ["Length must be between 1 and 100."]}


def test_a_batch_that_fails_at_its_fiftieth_operation_changes_nothing(client, auth, create_task):
    kept = create_task(title="kept")
    token = client.get("/api/tasks/changes", headers=auth).get_json()["sync_token"]
    operations = [create(f"task {n}") for n in range(49)]
    operations.append({"op": "update", "id": kept["id"] + 1000, "fields": {"title": "nowhere"}})
    operations.append(create("after the failure"))
    response = batch(client, auth, *operations)
    assert response.status_code == 404
    assert response.get_json() == {"detail": NOT_FOUND, "operation": 49, "errors": {"id": [NOT_FOUND]}}
    assert listed(client, auth) == [kept]
    changed = client.get("/api/tasks/changes", headers=auth, query_string={"since": token}).get_json()
    assert (changed["data"], changed["deleted"]) == ([], [])


def test_another_users_task_is_404_as_on_the_single_route(client, auth, other_auth, create_task):
    theirs = create_task(headers=other_auth, title="theirs")
    single = client.put(f"/api/tasks/{theirs['id']}", headers=auth, json={"title": "mine now"})
    for operation in (
        {"op": "update", "id": theirs["id"], "fields": {"title": "mine now"}},
        {"op": "complete", "id": theirs["id"], "completed": True},
        {"op": "delete", "id": theirs["id"]},
    ):
        response = batch(client, auth, create("mine"), operation)
        assert (response.status_code, response.get_json()) == (
            single.status_code,
            {**single.get_json(), "operation": 1, "errors": {"id": [NOT_FOUND]}},
        )
    assert client.get(f"/api/tasks/{theirs['id']}", headers=other_auth).get_json()["data"] == theirs
    assert listed(client, auth) == []


def test_a_stale_if_match_is_412_at_its_operation(client, auth, create_task):
    task = create_task(title="versioned")
    etag = client.get(f"/api/tasks/{task['id']}", headers=auth).headers["ETag"]
    assert client.put(f"/api/tasks/{task['id']}", headers=auth, json={"title": "moved on"}).status_code == 200
    response = batch(client, auth, {"op": "update", "id": task["id"], "fields": {"title": "old"}, "if_match": etag})
    assert response.status_code == 412
    assert response.get_json() == {"detail": STALE, "operation": 0, "errors": {"if_match": [STALE]}}
    current = client.get(f"/api/tasks/{task['id']}", headers=auth).headers["ETag"]
    ok = batch(client, auth, {"op": "delete", "id": task["id"], "if_match": current})
    assert (ok.status_code, ok.get_json()["data"]) == (200, [{"id": task["id"], "deleted": True}])


@pytest.mark.parametrize(
    ("operation", "errors"),
    [
        (
            {"op": "create", "fields": {"title": ""}},
            {"fields": {"title": ["Length must be between 1 and 255.", "Must not be blank."]}},
        ),
        ({"op": "create"}, {"fields": ["Missing data for required field."]}),
        ({"op": "rename", "id": 1}, {"op": ["Must be one of: create, update, complete, delete."]}),
        ({"op": "update", "id": "nobody", "fields": {}}, {"id": ["No earlier create of this batch has this temp_id."]}),
        ({"op": "complete", "id": 1}, {"completed": ["Missing data for required field."]}),
        ({"op": "delete", "id": 1.5}, {"id": ["Must be a task id or the temp_id of an earlier create."]}),
        ({"op": "delete", "id": 1, "temp_id": "x"}, {"temp_id": ["Only a create takes a temp_id."]}),
        ("create", {"_schema": ["Must be an object."]}),
    ],
)
def test_an_invalid_operation_is_422_naming_it_and_nothing_is_applied(client, auth, operation, errors):
    response = batch(client, auth, create("fine"), operation)
    assert response.status_code == 422
    assert response.get_json() == {"detail": "Validation failed", "operation": 1, "errors": errors}
    assert listed(client, auth) == []


def test_a_temp_id_used_twice_is_refused(client, auth):
    response = batch(client, auth, create("a", "same"), create("b", "same"))
    assert response.get_json() == {
        "detail": "Validation failed",
        "operation": 1,
        "errors": {"temp_id": ["Used by an earlier create of this batch."]},
    }


def test_a_retry_under_the_same_idempotency_key_applies_once(client, auth):
    key = {"Idempotency-Key": "import-2026-12-06"}
    first = batch(client, auth, create("imported", "t1"), headers=key)
    again = batch(client, auth, create("imported", "t1"), headers=key)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.data == first.data
    assert (first.headers.get("Idempotent-Replayed"), again.headers["Idempotent-Replayed"]) == (None, "true")
    assert len(listed(client, auth)) == 1
    other = batch(client, auth, create("something else"), headers=key)
    assert other.status_code == 422
    assert other.get_json() == {"detail": "This Idempotency-Key was already used with a different request body"}


def test_a_failed_batch_under_a_key_leaves_the_key_free(client, auth):
    key = {"Idempotency-Key": "retry-me"}
    failed = batch(client, auth, create("a"), {"op": "delete", "id": 999_999}, headers=key)
    assert failed.status_code == 404
    ok = batch(client, auth, create("a"), headers=key)
    assert ok.status_code == 200
    assert len(listed(client, auth)) == 1


def test_a_dead_session_is_401_before_anything_else(client, auth, token, app):
    assert batch(client, auth, create("warm the session cache")).status_code == 200
    delete_session(app, token)
    for operations in ([create("x")], [{"op": "rename"}], [{"op": "delete", "id": 999}]):
        response = batch(client, auth, *operations)
        assert (response.status_code, response.get_json()) == (401, {"detail": "Not authenticated"})


def test_a_body_that_is_not_a_batch_is_422(client, auth):
    for body, errors in (
        ({}, {"operations": ["Missing data for required field."]}),
        ({"operations": "create"}, {"operations": ["Not a valid list."]}),
        ([], {"_schema": ["Invalid input type."]}),
    ):
        response = client.post("/api/tasks/batch", headers=auth, json=body)
        assert (response.status_code, response.get_json()) == (422, {"detail": "Validation failed", "errors": errors})


def test_without_a_session_it_is_401(client):
    assert client.post("/api/tasks/batch", json={"operations": [create("x")]}).status_code == 401


def test_a_batch_counts_against_the_per_user_limit_as_one_request_per_operation(make_app, new_session):
    app = make_app(RATELIMIT_PER_USER="10 per minute")
    client, headers = app.test_client(), {"Authorization": f"Bearer {new_session('limited@example.com')}"}
    assert batch(client, headers, *(create(f"task {n}") for n in range(10))).status_code == 200
    refused = client.get("/api/tasks", headers=headers)
    assert (refused.status_code, refused.get_json()) == (
        429,
        {"detail": "Rate limit exceeded: 10 per 1 minute per user"},
    )
    too_many = batch(client, headers, create("one more"))
    assert too_many.status_code == 429
    with get_engine(app).connect() as connection:
        assert connection.execute(select(func.count()).select_from(task)).scalar() == 10
