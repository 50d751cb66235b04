"""A user sees and changes only their own tasks; a foreign task looks missing."""

import pytest

NOT_FOUND = {"detail": "Task not found"}


def routes(task_id):
    return [
        ("GET", f"/api/tasks/{task_id}", None),
        ("PUT", f"/api/tasks/{task_id}", {"title": "taken over", "completed": True}),
        ("PATCH", f"/api/tasks/{task_id}/complete", None),
        ("PATCH", f"/api/tasks/{task_id}/complete", {"completed": True}),
        ("DELETE", f"/api/tasks/{task_id}", None),
    ]


def test_list_shows_only_the_callers_tasks(client, auth, other_auth, create_task):
    mine = create_task(title="mine")
    create_task(headers=other_auth, title="theirs")
    response = client.get("/api/tasks", headers=auth)
    assert response.get_json() == {"data": [mine]}


def test_another_users_task_is_404_and_unchanged(client, auth, other_auth, create_task):
    victim = create_task(title="private", description="secret")
    for method, path, body in routes(victim["id"]):
        response = client.open(path, method=method, headers=other_auth, json=body)
        assert response.status_code == 404, (method, path)
        assert response.get_json() == NOT_FOUND
    assert client.get(f"/api/tasks/{victim['id']}", headers=auth).get_json() == {"data": victim}


def test_foreign_and_missing_tasks_are_indistinguishable(client, other_auth, create_task):
    foreign = create_task()
    missing_id = foreign["id"] + 1000
    for (method, foreign_path, body), (_, missing_path, _) in zip(
        routes(foreign["id"]), routes(missing_id), strict=True
    ):
        a = client.open(foreign_path, method=method, headers=other_auth, json=body)
        b = client.open(missing_path, method=method, headers=other_auth, json=body)
        assert (a.status_code, a.get_data(), a.headers["Content-Type"]) == (
            b.status_code,
            b.get_data(),
            b.headers["Content-Type"],
        )


@pytest.mark.parametrize("task_id", ["0", "-1", "2147483648", "99999999999999999999", "-99999999999999999999"])
def test_ids_that_cannot_exist_are_404(client, auth, task_id):
    for method, path, body in routes(task_id):
        response = client.open(path, method=method, headers=auth, json=body)
        assert response.status_code == 404, (method, path)
        assert response.get_json() == NOT_FOUND


@pytest.mark.parametrize("task_id", ["abc", "1.5", "1e3", "%20"])
def test_ids_that_are_not_integers_are_404(client, auth, task_id):
    response = client.get(f"/api/tasks/{task_id}", headers=auth)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
