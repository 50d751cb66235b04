"""Idempotency-Key on POST /api/tasks: retries create one task and get the first answer back."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from support import StatementLog, expected_etag, user_id_of
from todo_api.db.connections import get_engine
from todo_api.db.tables import idempotency_key

REUSED = {"detail": "This Idempotency-Key was already used with a different request body"}
BAD_KEY = {
    "detail": "Validation failed",
    "errors": {"Idempotency-Key": ["Must be 1 to 255 printable ASCII characters."]},
}
THREADS = 16


def post(client, auth, body, key):
    return client.post("/api/tasks", headers={**auth, "Idempotency-Key": key}, json=body)


def listed(client, auth):
    return client.get("/api/tasks", headers=auth).get_json()["data"]


def stored_keys(app, user_id):
    with get_engine(app).connect() as connection:
        rows = connection.execute(
            select(idempotency_key.c.key, idempotency_key.c.task_id).where(idempotency_key.c.user_id == user_id)
        )
        return dict(rows.all())


def age_keys(app, *keys, by=timedelta(hours=24, seconds=1)):
    """Set keys' creation back in time, as if they had been made `by` ago."""
    with get_engine(app).begin() as connection:
        connection.execute(
            update(idempotency_key)
            .where(idempotency_key.c.key.in_(keys))
            .values(created_at=datetime.now(UTC).replace(tzinfo=None) - by)
        )


def test_a_retried_create_returns_the_first_result(client, auth):
    body = {"title": "Pay rent", "tags": ["home"], "due_date": "2030-01-01T09:00:00Z"}
    first = post(client, auth, body, "create-rent-1")
    assert first.status_code == 200
    task = first.get_json()["data"]
    assert first.headers["ETag"] == expected_etag(task)
    assert "Idempotent-Replayed" not in first.headers
    retry = post(client, auth, body, "create-rent-1")
    assert (retry.status_code, retry.data, retry.headers["ETag"]) == (200, first.data, first.headers["ETag"])
    assert retry.headers["Content-Type"] == "application/json"
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert listed(client, auth) == [task]


def test_the_same_fields_written_differently_are_the_same_request(client, auth):
    first = post(client, auth, {"title": "Call", "priority": "high", "due_date": "2030-01-01T11:00:00+02:00"}, "k")
    retry = client.post(
        "/api/tasks",
        headers={**auth, "Idempotency-Key": "k", "Content-Type": "application/json"},
        data='{ "due_date": "2030-01-01T09:00:00Z", "unknown": 1,  "priority": "high", "title": "Call" }',
    )
    assert (retry.status_code, retry.data) == (200, first.data)
    assert len(listed(client, auth)) == 1


def test_the_first_result_is_replayed_even_after_the_task_changed(client, auth):
    first = post(client, auth, {"title": "Original"}, "k")
    task_id = first.get_json()["data"]["id"]
    client.put(f"/api/tasks/{task_id}", headers=auth, json={"title": "Renamed"})
    client.delete(f"/api/tasks/{task_id}", headers=auth)
    retry = post(client, auth, {"title": "Original"}, "k")
    assert (retry.status_code, retry.data, retry.headers["ETag"]) == (200, first.data, first.headers["ETag"])
    assert listed(client, auth) == []


def test_the_same_key_with_another_body_is_422_and_creates_nothing(client, auth):
    first = post(client, auth, {"title": "One"}, "k")
    for body in [{"title": "Two"}, {"title": "One", "priority": "high"}, {"title": "One", "tags": []}]:
        response = post(client, auth, body, "k")
        assert (response.status_code, response.get_json()) == (422, REUSED)
    assert listed(client, auth) == [first.get_json()["data"]]


def test_keys_belong_to_one_user(app, client, auth, other_auth, token):
    mine = post(client, auth, {"title": "Same"}, "shared-key").get_json()["data"]
    theirs = post(client, other_auth, {"title": "Same"}, "shared-key")
    assert theirs.status_code == 200
    assert "Idempotent-Replayed" not in theirs.headers
    theirs = theirs.get_json()["data"]
    assert theirs["id"] != mine["id"]
    assert theirs["user_id"] != mine["user_id"]
    assert post(client, other_auth, {"title": "Different"}, "shared-key").status_code == 422
    assert post(client, auth, {"title": "Same"}, "shared-key").get_json()["data"] == mine
    assert listed(client, auth) == [mine]
    assert listed(client, other_auth) == [theirs]
    assert stored_keys(app, user_id_of(app, token)) == {"shared-key": mine["id"]}


def test_different_keys_create_different_tasks(client, auth):
    first = post(client, auth, {"title": "Twice"}, "a").get_json()["data"]
    second = post(client, auth, {"title": "Twice"}, "b").get_json()["data"]
    assert first["id"] != second["id"]
    assert len(listed(client, auth)) == 2


def test_concurrent_creates_with_one_key_create_one_task(client, auth, concurrently):
    responses = concurrently(lambda c: post(c, auth, {"title": "Once"}, "concurrent-key"), THREADS)
    assert [response.status_code for response in responses] == [200] * THREADS
    assert len({response.data for response in responses}) == 1
    assert sum("Idempotent-Replayed" not in response.headers for response in responses) == 1
    tasks = listed(client, auth)
    assert [task["title"] for task in tasks] == ["Once"]
    assert responses[0].get_json()["data"] == tasks[0]


def test_an_expired_key_creates_a_new_task_and_expired_keys_are_cleaned_up(app, client, auth, other_auth, token):
    first = post(client, auth, {"title": "Daily"}, "daily").get_json()["data"]
    post(client, auth, {"title": "Old"}, "old")
    post(client, other_auth, {"title": "Theirs"}, "theirs")
    age_keys(app, "daily", "old", "theirs")
    again = post(client, auth, {"title": "Daily"}, "daily")
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers
    second = again.get_json()["data"]
    assert second["id"] != first["id"]
    assert [task["title"] for task in listed(client, auth)] == ["Daily", "Old", "Daily"]
    # The reused key now replays the new task; this user's other expired key is gone; others' are theirs to clean.
    assert post(client, auth, {"title": "Daily"}, "daily").get_json()["data"] == second
    assert stored_keys(app, user_id_of(app, token)) == {"daily": second["id"]}
    with get_engine(app).connect() as connection:
        assert (
            connection.execute(
                select(func.count()).select_from(idempotency_key).where(idempotency_key.c.key == "theirs")
            ).scalar_one()
            == 1
        )


def test_a_key_just_under_a_day_old_still_replays(app, client, auth):
    first = post(client, auth, {"title": "Kept"}, "kept")
    age_keys(app, "kept", by=timedelta(hours=23, minutes=59))
    retry = post(client, auth, {"title": "Kept"}, "kept")
    assert (retry.status_code, retry.data) == (200, first.data)


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there", "bell\x07"])
def test_a_malformed_key_is_422_and_creates_nothing(client, auth, key):
    response = client.post("/api/tasks", headers={**auth, "Idempotency-Key": key}, json={"title": "Nope"})
    assert (response.status_code, response.get_json()) == (422, BAD_KEY)
    assert listed(client, auth) == []


@pytest.mark.parametrize("key", ["x" * 255, "a", "with spaces and ~!@#$%^&*()", "550e8400-e29b-41d4-a716-446655440000"])
def test_any_printable_ascii_key_up_to_255_characters_works(client, auth, key):
    first = post(client, auth, {"title": "Fine"}, key)
    assert first.status_code == 200
    assert post(client, auth, {"title": "Fine"}, key).data == first.data
    assert len(listed(client, auth)) == 1


def test_an_invalid_body_does_not_use_up_the_key(client, auth):
    response = post(client, auth, {"title": ""}, "k")
    assert response.status_code == 422
    assert post(client, auth, {"title": "Valid"}, "k").status_code == 200
    assert [task["title"] for task in listed(client, auth)] == ["Valid"]


def test_a_create_without_a_key_stays_one_statement(app, client, auth):
    log = StatementLog(app)
    try:
        assert client.post("/api/tasks", headers=auth, json={"title": "Plain"}).status_code == 200
        assert log.statements == ["SELECT", "INSERT"]  # a session new to the worker is looked up first
        log.statements.clear()
        assert client.post("/api/tasks", headers=auth, json={"title": "Plain"}).status_code == 200
        assert log.statements == ["INSERT"]  # the insert checks the session itself
    finally:
        log.close()


def test_a_create_with_a_key_is_one_transaction(app, client, auth):
    log = StatementLog(app)
    try:
        assert post(client, auth, {"title": "Keyed"}, "k").status_code == 200
        # The session's lookup (new to this worker), then the transaction; its statements check the session.
        assert log.statements[:6] == ["SELECT", "BEGIN", "INSERT", "INSERT", "UPDATE", "COMMIT"]
        assert log.statements[6:] == ["DELETE"]  # this user's expired keys
        log.statements.clear()
        assert post(client, auth, {"title": "Keyed"}, "k").status_code == 200
        assert log.statements == ["BEGIN", "INSERT", "SELECT", "COMMIT"]  # a known session: no lookup
    finally:
        log.close()


def test_keys_are_kept_with_their_creation_time(app, client, auth, token):
    before = datetime.now(UTC).replace(tzinfo=None)
    post(client, auth, {"title": "Timed"}, "k")
    after = datetime.now(UTC).replace(tzinfo=None)
    with get_engine(app).connect() as connection:
        created_at = connection.execute(
            select(idempotency_key.c.created_at).where(idempotency_key.c.user_id == user_id_of(app, token))
        ).scalar_one()
    assert before <= created_at <= after
