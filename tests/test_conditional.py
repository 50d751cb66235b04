"""ETags on one-task responses; If-Match makes writes conditional, atomically; If-None-Match on a read."""

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from support import MICROSECOND, StatementLog, expected_etag, fetch, naive_utc
from todo_api.db.connections import get_engine
from todo_api.db.tables import task as task_table

STALE = {"detail": "The task has changed since it was read (If-Match does not match its ETag); fetch it again"}
NOT_FOUND = {"detail": "Task not found"}
THREADS = 12


def utcnow():
    return datetime.now(UTC).replace(tzinfo=None)


def count_tasks(client, auth):
    return len(client.get("/api/tasks", headers=auth).get_json()["data"])


# Each write that honours If-Match: (method, path suffix, JSON body or None).
WRITES = {
    "put plain field": ("put", "", {"title": "changed"}),
    "put schedule": ("put", "", {"due_date": "2031-01-01T09:00:00Z"}),
    "toggle": ("patch", "/complete", None),
    "set completed": ("patch", "/complete", {"completed": True}),
    "mark reminder sent": ("patch", "/mark-reminder-sent", None),
}


def send(client, auth, task_id, write, **headers):
    method, suffix, body = write
    kwargs = {"json": body} if body is not None else {}
    return getattr(client, method)(f"/api/tasks/{task_id}{suffix}", headers={**auth, **headers}, **kwargs)


def test_every_one_task_response_carries_the_tasks_etag(client, auth, create_task):
    created = client.post("/api/tasks", headers=auth, json={"title": "tagged", "remind_at": "2030-01-01T00:00:00Z"})
    task = created.get_json()["data"]
    assert created.headers["ETag"] == expected_etag(task)
    seen = {created.headers["ETag"]}
    fetched, tag = fetch(client, auth, task["id"])
    assert tag == created.headers["ETag"]
    for write in WRITES.values():
        response = send(client, auth, task["id"], write)
        assert response.status_code == 200
        body = response.get_json()["data"]
        assert response.headers["ETag"] == expected_etag(body)
        assert response.headers["ETag"] not in seen
        seen.add(response.headers["ETag"])
        assert fetch(client, auth, task["id"]) == (body, response.headers["ETag"])
    assert len(seen) == 1 + len(WRITES)


def test_list_and_delete_responses_carry_no_etag(client, auth, create_task):
    task = create_task()
    assert "ETag" not in client.get("/api/tasks", headers=auth).headers
    assert "ETag" not in client.delete(f"/api/tasks/{task['id']}", headers=auth).headers


def test_mark_reminder_sent_advances_updated_at(client, auth, create_task):
    task = create_task(remind_at="2030-01-01T00:00:00Z")
    marked = client.patch(f"/api/tasks/{task['id']}/mark-reminder-sent", headers=auth).get_json()["data"]
    assert marked["reminder_sent"] is True
    assert naive_utc(marked["updated_at"]) > naive_utc(task["updated_at"])


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_stale_if_match_is_412_and_changes_nothing(client, auth, create_task, write):
    task = create_task(remind_at="2030-01-01T00:00:00Z")
    _, first_tag = fetch(client, auth, task["id"])
    other_tab = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"description": "by another tab"})
    assert other_tab.status_code == 200
    before = fetch(client, auth, task["id"])
    response = send(client, auth, task["id"], write, **{"If-Match": first_tag})
    assert (response.status_code, response.get_json()) == (412, STALE)
    assert fetch(client, auth, task["id"]) == before


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_matching_if_match_applies_the_write_and_gives_a_new_etag(client, auth, create_task, write):
    task = create_task(remind_at="2030-01-01T00:00:00Z")
    _, tag = fetch(client, auth, task["id"])
    response = send(client, auth, task["id"], write, **{"If-Match": tag})
    assert response.status_code == 200
    assert response.headers["ETag"] != tag
    assert fetch(client, auth, task["id"]) == (response.get_json()["data"], response.headers["ETag"])


def test_delete_with_a_stale_etag_is_412_and_the_task_stays(client, auth, create_task):
    task = create_task()
    _, old_tag = fetch(client, auth, task["id"])
    client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    before = fetch(client, auth, task["id"])
    response = client.delete(f"/api/tasks/{task['id']}", headers={**auth, "If-Match": old_tag})
    assert (response.status_code, response.get_json()) == (412, STALE)
    assert fetch(client, auth, task["id"]) == before
    response = client.delete(f"/api/tasks/{task['id']}", headers={**auth, "If-Match": before[1]})
    assert (response.status_code, response.get_json()) == (200, {"data": {"ok": True}})
    assert client.get(f"/api/tasks/{task['id']}", headers=auth).status_code == 404


def test_two_tabs_the_second_write_must_see_the_first(client, auth, create_task):
    task = create_task(title="Groceries", description=None)
    _, tab_a_tag = fetch(client, auth, task["id"])
    _, tab_b_tag = fetch(client, auth, task["id"])
    tab_a = client.put(f"/api/tasks/{task['id']}", headers={**auth, "If-Match": tab_a_tag}, json={"title": "Food"})
    assert tab_a.status_code == 200
    tab_b = client.put(
        f"/api/tasks/{task['id']}", headers={**auth, "If-Match": tab_b_tag}, json={"title": "Groceries!"}
    )
    assert (tab_b.status_code, tab_b.get_json()) == (412, STALE)
    current, current_tag = fetch(client, auth, task["id"])
    assert (current["title"], current_tag) == ("Food", tab_a.headers["ETag"])
    retried = client.put(
        f"/api/tasks/{task['id']}", headers={**auth, "If-Match": current_tag}, json={"description": "milk"}
    )
    assert retried.status_code == 200
    assert (retried.get_json()["data"]["title"], retried.get_json()["data"]["description"]) == ("Food", "milk")


def test_recurring_completion_with_a_stale_etag_creates_no_occurrence(client, auth, create_task):
    task = create_task(due_date="2030-01-31T09:00:00Z", recurrence_pattern="monthly")
    _, old_tag = fetch(client, auth, task["id"])
    client.put(f"/api/tasks/{task['id']}", headers=auth, json={"title": "renamed"})
    before = fetch(client, auth, task["id"])
    for body in [None, {"completed": True}]:
        kwargs = {"json": body} if body else {}
        response = client.patch(f"/api/tasks/{task['id']}/complete", headers={**auth, "If-Match": old_tag}, **kwargs)
        assert (response.status_code, response.get_json()) == (412, STALE)
    assert fetch(client, auth, task["id"]) == before
    assert count_tasks(client, auth) == 1
    response = client.patch(f"/api/tasks/{task['id']}/complete", headers={**auth, "If-Match": before[1]})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["data"]["completed"], body["next_task"]["due_date"]) == (True, "2030-02-28T09:00:00+00:00")
    assert response.headers["ETag"] == expected_etag(body["data"])
    assert count_tasks(client, auth) == 2


def test_if_match_star_matches_any_existing_task(client, auth, create_task):
    task = create_task()
    response = client.put(f"/api/tasks/{task['id']}", headers={**auth, "If-Match": "*"}, json={"title": "starred"})
    assert (response.status_code, response.get_json()["data"]["title"]) == (200, "starred")
    response = client.delete(f"/api/tasks/{task['id'] + 1}", headers={**auth, "If-Match": "*"})
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


def test_if_match_takes_a_list_of_etags(client, auth, create_task):
    task = create_task()
    _, old_tag = fetch(client, auth, task["id"])
    client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    _, tag = fetch(client, auth, task["id"])
    response = client.put(
        f"/api/tasks/{task['id']}", headers={**auth, "If-Match": f'{old_tag}, "other", {tag}'}, json={"title": "listed"}
    )
    assert (response.status_code, response.get_json()["data"]["title"]) == (200, "listed")


@pytest.mark.parametrize(
    "header",
    [
        "W/{tag}",  # If-Match compares strongly: a weak tag never matches
        "{tag} garbage",
        "{unquoted}",
        '"{unquoted}',
        "",
        '"1-2-3"',
        '"99999999999999999999-1"',
        '"{id}-99999999999999999999"',  # beyond any datetime
    ],
)
def test_a_weak_malformed_or_foreign_if_match_is_412(client, auth, create_task, header):
    task = create_task()
    before = fetch(client, auth, task["id"])
    tag = before[1]
    header = header.format(tag=tag, unquoted=tag.strip('"'), id=task["id"])
    response = client.put(f"/api/tasks/{task['id']}", headers={**auth, "If-Match": header}, json={"title": "no"})
    assert (response.status_code, response.get_json()) == (412, STALE)
    assert fetch(client, auth, task["id"]) == before


def test_another_tasks_etag_does_not_match(client, auth, create_task):
    first, second = create_task(title="first"), create_task(title="second")
    _, first_tag = fetch(client, auth, first["id"])
    before = fetch(client, auth, second["id"])
    response = client.delete(f"/api/tasks/{second['id']}", headers={**auth, "If-Match": first_tag})
    assert (response.status_code, response.get_json()) == (412, STALE)
    assert fetch(client, auth, second["id"]) == before


@pytest.mark.parametrize("write", [*WRITES.values(), ("delete", "", None)], ids=[*WRITES.keys(), "delete"])
def test_missing_or_foreign_task_stays_404_with_if_match(client, auth, other_auth, create_task, write):
    task = create_task(remind_at="2030-01-01T00:00:00Z")
    before = fetch(client, auth, task["id"])
    for headers, task_id in [(other_auth, task["id"]), (auth, task["id"] + 1000), (auth, 2**40)]:
        for if_match in [before[1], '"stale"', "*"]:
            response = send(client, headers, task_id, write, **{"If-Match": if_match})
            assert (response.status_code, response.get_json()) == (404, NOT_FOUND)
    assert fetch(client, auth, task["id"]) == before


def test_if_none_match_on_a_read_answers_304_while_unchanged(client, auth, create_task):
    task = create_task()
    _, tag = fetch(client, auth, task["id"])
    for header in [tag, f"W/{tag}", f'"other", {tag}', "*"]:
        response = client.get(f"/api/tasks/{task['id']}", headers={**auth, "If-None-Match": header})
        assert (response.status_code, response.data, response.headers["ETag"]) == (304, b"", tag)
    client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    response = client.get(f"/api/tasks/{task['id']}", headers={**auth, "If-None-Match": tag})
    assert response.status_code == 200
    assert response.get_json()["data"]["completed"] is True
    assert response.headers["ETag"] != tag
    response = client.get(f"/api/tasks/{task['id'] + 1}", headers={**auth, "If-None-Match": "*"})
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


def set_updated_at(app, task_id, value):
    with get_engine(app).begin() as connection:
        connection.execute(update(task_table).where(task_table.c.id == task_id).values(updated_at=value))


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_updated_at_advances_even_when_the_clock_does_not(app, client, auth, create_task, write):
    """Two writes in one microsecond, or a clock behind the stored time, still give a new version."""
    task = create_task(remind_at="2030-01-01T00:00:00Z")
    ahead = utcnow().replace(microsecond=999_999) + timedelta(hours=1)
    set_updated_at(app, task["id"], ahead)
    _, tag = fetch(client, auth, task["id"])
    response = send(client, auth, task["id"], write, **{"If-Match": tag})
    assert response.status_code == 200
    assert naive_utc(response.get_json()["data"]["updated_at"]) == ahead + MICROSECOND
    assert response.headers["ETag"] != tag


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_concurrent_writes_with_one_etag_apply_exactly_once(concurrently, client, auth, create_task, write):
    task = create_task(remind_at="2030-01-01T00:00:00Z")
    _, tag = fetch(client, auth, task["id"])
    responses = concurrently(lambda c: send(c, auth, task["id"], write, **{"If-Match": tag}), THREADS)
    assert Counter(response.status_code for response in responses) == {200: 1, 412: THREADS - 1}


def test_concurrent_deletes_with_one_etag_delete_once(concurrently, client, auth, create_task):
    task = create_task()
    _, tag = fetch(client, auth, task["id"])
    headers = {**auth, "If-Match": tag}
    responses = concurrently(lambda c: c.delete(f"/api/tasks/{task['id']}", headers=headers), THREADS)
    # The losers find the task gone, not changed.
    assert Counter(response.status_code for response in responses) == {200: 1, 404: THREADS - 1}


def test_concurrent_toggles_of_a_recurring_task_with_one_etag_complete_it_once(concurrently, client, auth, create_task):
    task = create_task(due_date="2030-01-01T09:00:00Z", recurrence_pattern="daily")
    _, tag = fetch(client, auth, task["id"])
    headers = {**auth, "If-Match": tag}
    responses = concurrently(lambda c: c.patch(f"/api/tasks/{task['id']}/complete", headers=headers), THREADS)
    assert Counter(response.status_code for response in responses) == {200: 1, 412: THREADS - 1}
    assert count_tasks(client, auth) == 2


def test_etag_is_exposed_to_the_browser(client, auth, create_task):
    task = create_task()
    response = client.get(f"/api/tasks/{task['id']}", headers={**auth, "Origin": "http://localhost:3000"})
    exposed = {name.strip().lower() for name in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {
        "etag",
        "idempotent-replayed",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
    }


def test_plain_writes_stay_single_statements_with_or_without_if_match(app, client, auth, create_task):
    task = create_task()
    log = StatementLog(app)
    try:
        for conditional in [False, True]:
            headers = {**auth, "If-Match": fetch(client, auth, task["id"])[1]} if conditional else auth
            log.statements.clear()
            assert client.put(f"/api/tasks/{task['id']}", headers=headers, json={"title": "x"}).status_code == 200
            assert log.statements == ["UPDATE"]  # the write, which checks the session itself
        log.statements.clear()
        assert client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).status_code == 200
        assert log.statements == ["UPDATE"]
    finally:
        log.close()


def test_a_write_without_if_match_behaves_as_before(app, client, auth, create_task):
    task = create_task()
    _, tag = fetch(client, auth, task["id"])
    set_updated_at(app, task["id"], datetime(2020, 1, 1))
    before = utcnow()
    response = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"title": "unconditional"})
    after = utcnow()
    assert (response.status_code, response.get_json()["data"]["title"]) == (200, "unconditional")
    assert response.headers["ETag"] != tag
    with get_engine(app).connect() as connection:
        stored = connection.execute(select(task_table.c.updated_at).where(task_table.c.id == task["id"])).scalar_one()
    assert before <= stored <= after
