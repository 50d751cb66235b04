"""Bad input gets a clear JSON error with the right status, and changes nothing."""

import io
import json

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

VALID = {"title": "ok"}


def error_of(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    body = response.get_json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def stored(client, auth):
    return client.get("/api/tasks", headers=auth).get_json()["data"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "title", "Missing data for required field."),
        ({"title": ""}, "title", "Length must be between 1 and 255."),
        ({"title": "   "}, "title", "Must not be blank."),
        ({"title": "x" * 256}, "title", "Length must be between 1 and 255."),
        ({"title": 5}, "title", "Not a valid string."),
        ({"title": None}, "title", "Field may not be null."),
        ({"title": "a\x00b"}, "title", "Must not contain NUL characters."),
        ({"title": "ok", "description": "d" * 10_001}, "description", "Longer than maximum length 10000."),
        ({"title": "ok", "category": "c" * 101}, "category", "Longer than maximum length 100."),
        ({"title": "ok", "priority": "urgent"}, "priority", "Must be one of: low, medium, high."),
        ({"title": "ok", "priority": None}, "priority", "Field may not be null."),
        ({"title": "ok", "tags": "a,b"}, "tags", "Not a valid list."),
        ({"title": "ok", "tags": None}, "tags", "Field may not be null."),
        ({"title": "ok", "tags": ["t"] * 51}, "tags", "Longer than maximum length 50."),
    ],
)
def test_invalid_fields_are_422_naming_the_field(client, auth, body, field, message):
    body = error_of(client.post("/api/tasks", headers=auth, json=body), 422)
    assert body["detail"] == "Validation failed"
    assert message in body["errors"][field]
    assert stored(client, auth) == []


@pytest.mark.parametrize(
    ("tag", "messages"),
    [
        ("", ["Length must be between 1 and 50.", "Must not be blank."]),
        (" ", ["Must not be blank."]),
        ("t" * 51, ["Length must be between 1 and 50."]),
        (7, ["Not a valid string."]),
    ],
)
def test_each_tag_is_checked(client, auth, tag, messages):
    body = error_of(client.post("/api/tasks", headers=auth, json={"title": "ok", "tags": ["fine", tag]}), 422)
    assert body["errors"] == {"tags": {"1": messages}}


def test_limits_are_inclusive(client, auth):
    body = {
        "title": "t" * 255,
        "description": "d" * 10_000,
        "category": "c" * 100,
        "tags": ["g" * 50] * 50,
    }
    response = client.post("/api/tasks", headers=auth, json=body)
    assert response.status_code == 200
    task = response.get_json()["data"]
    assert {key: task[key] for key in body} == body


def test_unicode_is_kept_exactly(client, auth):
    body = {"title": "Füße 🦶 — 東京", "tags": ["ñ", "🏷️"]}
    task = client.post("/api/tasks", headers=auth, json=body).get_json()["data"]
    assert (task["title"], task["tags"]) == (body["title"], body["tags"])


def test_unknown_and_server_owned_fields_are_ignored(app, client, auth, create_task):
    sent = {
        "title": "mine",
        "id": 424242,
        "user_id": "someone-else",
        "created_at": "2000-01-01T00:00:00+00:00",
        "updated_at": "2000-01-01T00:00:00+00:00",
        "completed": True,
        "colour": "blue",
    }
    created = client.post("/api/tasks", headers=auth, json=sent).get_json()["data"]
    assert created["id"] != 424242
    assert created["user_id"] != "someone-else"
    assert not created["created_at"].startswith("2000")
    assert created["completed"] is False

    updated = client.put(f"/api/tasks/{created['id']}", headers=auth, json={**sent, "title": "renamed"})
    assert updated.status_code == 200
    task = updated.get_json()["data"]
    assert (task["id"], task["user_id"], task["created_at"]) == (
        created["id"],
        created["user_id"],
        created["created_at"],
    )
    assert task["title"] == "renamed"


@pytest.mark.parametrize(
    "body",
    [
        {"title": "new", "priority": "urgent"},
        {"title": "new", "completed": "true"},
        {"title": "new", "completed": 1},
        {"title": "new", "completed": None},
        {"title": "new", "tags": [None]},
        {"description": "new", "title": ""},
    ],
)
def test_rejected_update_changes_nothing(client, auth, create_task, body):
    task = create_task(title="old", description="old", tags=["old"])
    error_of(client.put(f"/api/tasks/{task['id']}", headers=auth, json=body), 422)
    assert stored(client, auth) == [task]


@pytest.mark.parametrize("value", ["true", 1, 0, None, "yes"])
def test_complete_needs_a_real_boolean(client, auth, create_task, value):
    task = create_task()
    body = error_of(client.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json={"completed": value}), 422)
    assert list(body["errors"]) == ["completed"]
    assert stored(client, auth) == [task]


def test_complete_with_an_empty_object_is_422(client, auth, create_task):
    task = create_task()
    body = error_of(client.patch(f"/api/tasks/{task['id']}/complete", headers=auth, json={}), 422)
    assert body["errors"] == {"completed": ["Missing data for required field."]}


@pytest.mark.parametrize("body", [[], [{"title": "x"}], "title", 42, None, True])
def test_body_must_be_a_json_object(client, auth, body):
    response = client.post("/api/tasks", headers=auth, data=json.dumps(body), content_type="application/json")
    assert error_of(response, 422)["errors"] == {"_schema": ["Invalid input type."]}


@pytest.mark.parametrize("raw", ["{", '{"title": }', "nul\x00", '{"title": "\\ud800"}', "[" * 5000])
def test_malformed_json_is_400(client, auth, raw):
    response = client.post("/api/tasks", headers=auth, data=raw, content_type="application/json")
    error_of(response, 400)
    assert stored(client, auth) == []


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_non_json_content_type_is_415(client, auth, content_type):
    headers = dict(auth)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/api/tasks", headers=headers, data='{"title": "x"}')
    error_of(response, 415)
    assert stored(client, auth) == []


def test_body_over_one_mebibyte_is_413(client, auth, create_task):
    task = create_task()
    huge = '{"title": "x", "description": "' + "d" * (1024 * 1024) + '"}'
    for method, path in [("POST", "/api/tasks"), ("PUT", f"/api/tasks/{task['id']}")]:
        response = client.open(path, method=method, headers=auth, data=huge, content_type="application/json")
        error_of(response, 413)
    assert stored(client, auth) == [task]


class Chunks(io.RawIOBase):
    """A request body of unknown length, read as a server hands over a chunked one."""

    def __init__(self, data):
        self.data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = self.data.read(min(len(buffer), 8192))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def send_chunked(app, method, path, body, headers):
    """The request as gunicorn passes a chunked body: no Content-Length, `wsgi.input_terminated` set."""
    environ = EnvironBuilder(
        path=path,
        method=method,
        headers={**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    ).get_environ()
    assert "CONTENT_LENGTH" not in environ
    environ.update({"wsgi.input": Chunks(body), "wsgi.input_terminated": True})
    return app.response_class(*run_wsgi_app(app, environ, buffered=True))


def padded(body, size):
    """`body` followed by whitespace, `size` bytes in all: still the same JSON."""
    return body + b" " * (size - len(body))


MIB = 1024 * 1024


def test_chunked_body_over_one_mebibyte_is_413_and_stores_nothing(app, client, auth, create_task):
    """The first MiB alone is valid JSON: cutting the body there would store it."""
    task = create_task()
    for method, path in [("POST", "/api/tasks"), ("PUT", f"/api/tasks/{task['id']}")]:
        for size in [MIB + 1, 3 * MIB]:
            response = send_chunked(app, method, path, padded(b'{"title": "cut"}', size), auth)
            assert error_of(response, 413) == {"detail": "The data value transmitted exceeds the capacity limit."}
    assert stored(client, auth) == [task]


def test_chunked_body_of_up_to_one_mebibyte_is_read_whole(app, client, auth):
    for size in [MIB, MIB - 1, 20]:
        response = send_chunked(app, "POST", "/api/tasks", padded(b'{"title": "whole"}', size), auth)
        assert response.status_code == 200, response.get_data(as_text=True)
    assert [task["title"] for task in stored(client, auth)] == ["whole"] * 3


def test_unknown_route_is_404_json(client, auth):
    for path in ["/nope", "/api", "/api/tasks/1/nope", "/api/tasks/"]:
        assert error_of(client.get(path, headers=auth), 404)["detail"].startswith("The requested URL was not found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/api/tasks", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("POST", "/api/tasks/1", {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}),
        ("GET", "/api/tasks/1/complete", {"OPTIONS", "PATCH"}),
        ("POST", "/health", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_wrong_method_is_405_json_with_allow(client, auth, method, path, allowed):
    response = client.open(path, method=method, headers=auth)
    error_of(response, 405)
    assert set(response.headers["Allow"].split(", ")) == allowed
