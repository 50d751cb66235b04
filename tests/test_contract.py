"""The API contract the frontend relies on: paths, shapes and status codes."""

from datetime import UTC, datetime, timedelta

import pytest

from support import REFERENCE_TASK_COLUMNS, user_id_of

TASK_KEYS = REFERENCE_TASK_COLUMNS | {
    "due_date",
    "due_all_day",
    "recurrence_pattern",
    "is_recurring",
    "remind_at",
    "reminder_sent",
}


def parse_time(value):
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def test_root_answers_with_a_message(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json() == {"message": "todo-api is running"}


def test_health_answers_without_a_session(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "healthy"}


def test_readiness_pings_the_database(client):
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


def test_new_user_has_an_empty_list(client, auth):
    response = client.get("/api/tasks", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"data": []}


def test_create_returns_the_whole_task(app, client, auth, token):
    before = datetime.now(UTC)
    response = client.post(
        "/api/tasks",
        headers=auth,
        json={
            "title": "Integration Test Task",
            "description": "Testing the complete task flow",
            "priority": "high",
            "category": "integration-test",
            "tags": ["test", "integration"],
        },
    )
    assert response.status_code == 200
    task = response.get_json()["data"]
    assert set(task) == TASK_KEYS
    assert isinstance(task["id"], int)
    assert task["user_id"] == user_id_of(app, token)
    assert task["title"] == "Integration Test Task"
    assert task["description"] == "Testing the complete task flow"
    assert task["completed"] is False
    assert task["priority"] == "high"
    assert task["category"] == "integration-test"
    assert task["tags"] == ["test", "integration"]
    created = parse_time(task["created_at"])
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC) + timedelta(seconds=1)
    assert task["updated_at"] == task["created_at"]
    assert (task["due_date"], task["recurrence_pattern"], task["is_recurring"]) == (None, None, False)
    assert (task["remind_at"], task["reminder_sent"]) == (None, False)


def test_create_fills_defaults(client, auth):
    response = client.post("/api/tasks", headers=auth, json={"title": "Just a title"})
    assert response.status_code == 200
    task = response.get_json()["data"]
    assert task["description"] is None
    assert task["priority"] == "medium"
    assert task["category"] is None
    assert task["tags"] == []
    assert task["completed"] is False


def test_list_is_newest_first(client, auth, create_task):
    ids = [create_task(title=f"task {n}")["id"] for n in range(3)]
    response = client.get("/api/tasks", headers=auth)
    assert response.status_code == 200
    assert [task["id"] for task in response.get_json()["data"]] == ids[::-1]


def test_get_one_task(client, auth, create_task):
    created = create_task(title="Look me up")
    response = client.get(f"/api/tasks/{created['id']}", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"data": created}


def test_update_changes_only_the_fields_sent(client, auth, create_task):
    created = create_task(title="Before", description="keep me", tags=["a"], category="home")
    response = client.put(f"/api/tasks/{created['id']}", headers=auth, json={"title": "After", "completed": True})
    assert response.status_code == 200
    updated = response.get_json()["data"]
    assert updated["title"] == "After"
    assert updated["completed"] is True
    assert updated["description"] == "keep me"
    assert updated["tags"] == ["a"]
    assert updated["category"] == "home"
    assert updated["priority"] == "medium"
    assert updated["created_at"] == created["created_at"]
    assert parse_time(updated["updated_at"]) > parse_time(created["updated_at"])
    assert client.get(f"/api/tasks/{created['id']}", headers=auth).get_json() == {"data": updated}


def test_update_can_clear_nullable_fields(client, auth, create_task):
    created = create_task(description="text", category="work", tags=["x"])
    response = client.put(
        f"/api/tasks/{created['id']}", headers=auth, json={"description": None, "category": None, "tags": []}
    )
    assert response.status_code == 200
    task = response.get_json()["data"]
    assert (task["description"], task["category"], task["tags"]) == (None, None, [])


def test_update_with_no_known_fields_changes_nothing(client, auth, create_task):
    created = create_task()
    response = client.put(f"/api/tasks/{created['id']}", headers=auth, json={"colour": "blue"})
    assert response.status_code == 200
    assert response.get_json() == {"data": created}


def test_toggle_flips_completion_and_back(client, auth, create_task):
    created = create_task()
    first = client.patch(f"/api/tasks/{created['id']}/complete", headers=auth)
    assert first.status_code == 200
    assert first.get_json()["data"]["completed"] is True
    assert parse_time(first.get_json()["data"]["updated_at"]) > parse_time(created["updated_at"])
    second = client.patch(f"/api/tasks/{created['id']}/complete", headers=auth)
    assert second.status_code == 200
    assert second.get_json()["data"]["completed"] is False


@pytest.mark.parametrize("state", [True, False])
def test_complete_with_a_body_sets_that_state_on_every_retry(client, auth, create_task, state):
    created = create_task()
    for _ in range(3):
        response = client.patch(f"/api/tasks/{created['id']}/complete", headers=auth, json={"completed": state})
        assert response.status_code == 200
        assert response.get_json()["data"]["completed"] is state


def test_delete_answers_ok_and_the_task_is_gone(client, auth, create_task):
    created = create_task()
    response = client.delete(f"/api/tasks/{created['id']}", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"data": {"ok": True}}
    assert client.get(f"/api/tasks/{created['id']}", headers=auth).status_code == 404
    assert client.delete(f"/api/tasks/{created['id']}", headers=auth).status_code == 404
    assert client.get("/api/tasks", headers=auth).get_json() == {"data": []}


def test_reference_flow_create_get_update_toggle_delete(client, auth, create_task):
    """The reference suite's end-to-end flow, with exact expectations."""
    task = create_task(title="Authentication Test Task", description="Testing auth on all endpoints")
    task_id = task["id"]
    assert client.get(f"/api/tasks/{task_id}", headers=auth).get_json()["data"]["id"] == task_id
    updated = client.put(f"/api/tasks/{task_id}", headers=auth, json={"title": "Updated", "completed": True})
    assert (updated.status_code, updated.get_json()["data"]["completed"]) == (200, True)
    toggled = client.patch(f"/api/tasks/{task_id}/complete", headers=auth)
    assert (toggled.status_code, toggled.get_json()["data"]["completed"]) == (200, False)
    deleted = client.delete(f"/api/tasks/{task_id}", headers=auth)
    assert (deleted.status_code, deleted.get_json()) == (200, {"data": {"ok": True}})


def test_missing_task_is_404_json(client, auth):
    for method, path in [
        ("GET", "/api/tasks/999999"),
        ("PUT", "/api/tasks/999999"),
        ("DELETE", "/api/tasks/999999"),
        ("PATCH", "/api/tasks/999999/complete"),
    ]:
        response = client.open(path, method=method, headers=auth, json={"title": "x"} if method == "PUT" else None)
        assert response.status_code == 404, (method, path)
        assert response.get_json() == {"detail": "Task not found"}
