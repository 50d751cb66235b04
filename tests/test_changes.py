"""`GET /api/tasks/changes`: a client's replica, synced from nothing while others write, equals the server's tasks."""

import random
import threading
import time
from datetime import datetime

import pytest
from sqlalchemy import insert, text

from todo_api.db.connections import get_engine
from todo_api.db.tables import task as task_table
from todo_api.tasks.changes import Position, get_sync_tokens

WRITERS = 4
OPERATIONS_PER_WRITER = 25


def sync(client, auth, replica, token=None, limit=1000):
    """Apply answers to `replica` (id -> task) until one says nothing more follows; returns its token."""
    while True:
        query = {"limit": limit, **({"since": token} if token else {})}
        response = client.get("/api/tasks/changes", headers=auth, query_string=query)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert set(body) == {"data", "deleted", "sync_token", "has_more"}
        for task in body["data"]:
            replica[task["id"]] = task
        for task_id in body["deleted"]:
            replica.pop(task_id, None)
        token = body["sync_token"]
        if not body["has_more"]:
            return token


def server_tasks(client, auth):
    tasks, cursor = {}, None
    while True:
        query = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/tasks", headers=auth, query_string=query).get_json()
        tasks.update((task["id"], task) for task in body["data"])
        cursor = body.get("next_cursor")
        if cursor is None:
            return tasks


def test_first_sync_answers_every_task_page_by_page(client, auth, other_auth, create_task):
    mine = {create_task(title=f"mine {n}")["id"] for n in range(5)}
    create_task(headers=other_auth, title="theirs")
    pages = []
    token = None
    while True:
        query = {"limit": 2, **({"since": token} if token else {})}
        body = client.get("/api/tasks/changes", headers=auth, query_string=query).get_json()
        pages.append(([task["id"] for task in body["data"]], body["deleted"], body["has_more"]))
        token = body["sync_token"]
        if not body["has_more"]:
            break
    ordered = sorted(mine)
    assert pages == [(ordered[:2], [], True), (ordered[2:4], [], True), (ordered[4:], [], False)]
    body = client.get("/api/tasks/changes", headers=auth, query_string={"since": token}).get_json()
    assert (body["data"], body["deleted"], body["has_more"]) == ([], [], False)
    replica = {}
    sync(client, auth, replica)
    assert replica == server_tasks(client, auth)


def test_changes_since_a_token_are_the_changed_and_the_deleted(client, auth, create_task):
    removed, kept, edited = (create_task(title=title)["id"] for title in ("removed", "kept", "edited"))
    replica = {}
    token = sync(client, auth, replica)
    assert client.put(f"/api/tasks/{edited}", headers=auth, json={"title": "edited again"}).status_code == 200
    assert client.delete(f"/api/tasks/{removed}", headers=auth).status_code == 200
    added = create_task(title="added")["id"]
    body = client.get("/api/tasks/changes", headers=auth, query_string={"since": token}).get_json()
    assert sorted(task["id"] for task in body["data"]) == sorted([edited, added])
    assert body["deleted"] == [removed]
    assert body["has_more"] is False
    assert kept not in {task["id"] for task in body["data"]}
    sync(client, auth, replica, token)
    assert replica == server_tasks(client, auth)


def test_every_kind_of_change_is_in_the_log(client, auth, create_task):
    recurring = create_task(title="weekly", due_date="2030-01-07T09:00:00Z", recurrence_pattern="weekly")["id"]
    reminded = create_task(title="remind me", due_date="2030-01-07T09:00:00")["id"]
    replica = {}
    token = sync(client, auth, replica)
    steps = [
        lambda: client.patch(f"/api/tasks/{recurring}/complete", headers=auth),
        lambda: client.patch(f"/api/tasks/{reminded}/mark-reminder-sent", headers=auth),
        lambda: client.put("/api/settings", headers=auth, json={"time_zone": "Asia/Tokyo"}),
        lambda: client.patch(f"/api/tasks/{recurring}/complete", headers=auth, json={"completed": False}),
    ]
    for step in steps:
        assert step().status_code == 200
        token = sync(client, auth, replica, token)
        assert replica == server_tasks(client, auth)
    assert len(replica) == 3  # the recurring task's next occurrence came in too


def test_another_users_changes_are_never_answered(client, auth, other_auth, create_task):
    create_task(title="mine")
    replica = {}
    token = sync(client, auth, replica)
    theirs = create_task(headers=other_auth, title="theirs")["id"]
    client.delete(f"/api/tasks/{theirs}", headers=other_auth)
    body = client.get("/api/tasks/changes", headers=auth, query_string={"since": token}).get_json()
    assert (body["data"], body["deleted"]) == ([], [])


def test_a_token_of_another_user_is_422_naming_since(client, auth, other_auth, create_task):
    create_task()
    token = sync(client, auth, {})
    response = client.get("/api/tasks/changes", headers=other_auth, query_string={"since": token})
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"since": ["Not a valid sync token."]}


@pytest.mark.parametrize("since", ["garbage", "a.b", "x" * 2000])
def test_a_forged_or_garbled_token_is_422_naming_since(client, auth, since):
    response = client.get("/api/tasks/changes", headers=auth, query_string={"since": since})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"since"}


def test_a_token_edited_in_content_is_422(app, client, auth, create_task):
    tokens = get_sync_tokens(app)
    user_tag = tokens.user_tag(create_task()["user_id"])
    forged = tokens.serializer.dumps([1, user_tag, 0, [0, 0], None, int(time.time()), None])
    assert client.get("/api/tasks/changes", headers=auth, query_string={"since": forged}).status_code == 200
    forged = tokens.serializer.dumps([1, user_tag, -1, [0, 0], None, int(time.time()), None])
    response = client.get("/api/tasks/changes", headers=auth, query_string={"since": forged})
    assert response.status_code == 422


def test_a_token_older_than_the_retention_is_410(app, client, auth, create_task):
    create_task()
    token = sync(client, auth, {})
    tokens = get_sync_tokens(app)
    user_id = client.get("/api/tasks", headers=auth).get_json()["data"][0]["user_id"]
    position = tokens.load(token, user_id)
    old = Position(position.low, position.after, position.snapshot, int(time.time()) - 31 * 24 * 3600)
    response = client.get("/api/tasks/changes", headers=auth, query_string={"since": tokens.dump(user_id, old)})
    assert response.status_code == 410
    assert response.get_json()["detail"] == (
        "The sync token is older than the changes kept; sync again from the start, without `since`"
    )


@pytest.mark.parametrize("limit", ["0", "1001", "many"])
def test_limit_out_of_range_is_422(client, auth, limit):
    response = client.get("/api/tasks/changes", headers=auth, query_string={"limit": limit})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"limit"}


def test_without_a_session_it_is_401(client):
    assert client.get("/api/tasks/changes").status_code == 401


def write_at_random(app, auth, seed, stop):
    """One writer: creates, edits, completes and reopens (recurring tasks too), deletes and batches its user's
    tasks."""
    rng = random.Random(seed)
    client = app.test_client()
    mine = []
    for n in range(OPERATIONS_PER_WRITER):
        choice = rng.random()
        if not mine or choice < 0.3:
            fields = {"title": f"w{seed}-{n}"}
            if rng.random() < 0.4:
                fields.update(due_date="2031-03-01T10:00:00Z", recurrence_pattern=rng.choice(["daily", "weekly"]))
            response = client.post("/api/tasks", headers=auth, json=fields)
            assert response.status_code == 200
            mine.append(response.get_json()["data"]["id"])
        elif choice < 0.55:
            task_id = rng.choice(mine)
            client.put(f"/api/tasks/{task_id}", headers=auth, json={"title": f"edit {seed}-{n}"})
        elif choice < 0.7:
            response = client.patch(f"/api/tasks/{rng.choice(mine)}/complete", headers=auth)
            if response.status_code == 200 and "next_task" in response.get_json():
                mine.append(response.get_json()["next_task"]["id"])
        elif choice < 0.9:
            task_id = mine.pop(rng.randrange(len(mine)))
            client.delete(f"/api/tasks/{task_id}", headers=auth)
        else:
            operations = [
                {"op": "create", "temp_id": "new", "fields": {"title": f"batch {seed}-{n}"}},
                {"op": "update", "id": "new", "fields": {"title": f"batch {seed}-{n}, edited"}},
                {"op": "complete", "id": rng.choice(mine), "completed": rng.random() < 0.5},
            ]
            response = client.post("/api/tasks/batch", headers=auth, json={"operations": operations})
            if response.status_code == 200:
                body = response.get_json()
                mine.append(body["temp_ids"]["new"])
                if "next_task" in body["data"][2]:
                    mine.append(body["data"][2]["next_task"]["id"])
    stop.wait(0)


def test_a_replica_synced_during_concurrent_writes_equals_the_server(app, client, auth, create_task):
    for n in range(3):
        create_task(title=f"before {n}")
    replica, token = {}, None
    stop = threading.Event()
    writers = [threading.Thread(target=write_at_random, args=(app, auth, seed, stop)) for seed in range(WRITERS)]
    for writer in writers:
        writer.start()
    syncs = 0
    while any(writer.is_alive() for writer in writers):
        token = sync(client, auth, replica, token, limit=7)
        syncs += 1
    for writer in writers:
        writer.join()
    token = sync(client, auth, replica, token, limit=7)
    assert syncs >= 1
    assert replica == server_tasks(client, auth)
    # A new replica from nothing agrees too.
    fresh = {}
    sync(client, auth, fresh, limit=5)
    assert fresh == replica


@pytest.mark.backends("postgres", "pgbouncer")
def test_a_change_that_commits_after_a_later_one_is_not_skipped(app, client, auth, create_task):
    """Transaction A starts writing first, B commits first: a sync between the two commits sees B only, and the
    next one must still bring A's change, though A's transaction id is smaller than B's."""
    user_id = create_task(title="first")["user_id"]
    replica = {}
    token = sync(client, auth, replica)
    now = datetime(2030, 1, 1)
    row = {"user_id": user_id, "completed": False, "priority": "medium", "tags": [], "created_at": now}
    row |= {"updated_at": now, "reminder_sent": False, "due_all_day": False}
    with get_engine(app).connect() as late:
        late = late.execution_options(isolation_level="READ COMMITTED")
        with late.begin():
            late.execute(insert(task_table).values(title="late", **row))
            assert late.execute(text("SELECT pg_current_xact_id() IS NOT NULL")).scalar() is True
            create_task(title="early")
            token = sync(client, auth, replica, token)
            assert sorted(task["title"] for task in replica.values()) == ["early", "first"]
        sync(client, auth, replica, token)
    assert sorted(task["title"] for task in replica.values()) == ["early", "first", "late"]
    assert replica == server_tasks(client, auth)


def test_purge_changes_forgets_the_log_older_than_the_retention(app, client, auth, create_task):
    create_task(title="old news")
    with get_engine(app).begin() as connection:
        connection.execute(text("UPDATE task_change SET changed_at = '2020-01-01 00:00:00'"))
    create_task(title="fresh")
    result = app.test_cli_runner().invoke(args=["purge-changes"])
    assert (result.exit_code, result.output) == (0, "Purged 1 change log rows older than 30 days.\n")
    with get_engine(app).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM task_change")).scalar() == 1
