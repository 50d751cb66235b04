"""The service rides out database restarts and outages without a restart of its own."""

import time

import pytest
from sqlalchemy import create_engine, text

from support import ADMIN_URL
from todo_api.db.connections import get_engine
from todo_api.db.engine import normalize_url

pytestmark = pytest.mark.backends("postgres", "pgbouncer")


def terminate_service_connections(database):
    admin = create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'todo-api' AND datname = :database"
            ),
            {"database": database},
        ).scalar()
    admin.dispose()
    return killed


def terminate_and_wait(database):
    """Terminate the service's connections, and wait until their server processes have gone (and so have told
    the connections they are closed)."""
    assert terminate_service_connections(database) >= 1
    deadline = time.monotonic() + 5
    while terminate_service_connections(database) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_requests_succeed_right_after_the_database_drops_every_connection(app, client, auth, create_task):
    task = create_task()
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert terminate_service_connections(get_engine(app).url.database) >= 1
    response = client.get("/api/tasks", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"data": [task]}
    assert client.patch(f"/api/tasks/{task['id']}/complete", headers=auth).status_code == 200


def test_a_write_right_after_the_database_drops_every_connection_succeeds_once(app, client, auth, create_task):
    """The task routes' first statement is the write itself (it checks the session): a connection the server
    ended is replaced and the write runs again, exactly once."""
    task = create_task()
    terminate_and_wait(get_engine(app).url.database)
    response = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    assert (response.status_code, response.get_json()["data"]["completed"]) == (200, True)
    terminate_and_wait(get_engine(app).url.database)
    assert client.post("/api/tasks", headers=auth, json={"title": "after"}).status_code == 200
    assert [t["title"] for t in client.get("/api/tasks", headers=auth).get_json()["data"]] == ["after", "A task"]


def test_a_statement_past_the_timeout_is_503_not_a_stuck_worker(make_app, auth, token):
    app = make_app(DATABASE_STATEMENT_TIMEOUT_MS=100)
    engine = get_engine(app)
    with engine.connect() as connection:
        connection.execute(
            text(
                "CREATE OR REPLACE FUNCTION slow_session_check() RETURNS trigger AS "
                "$$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        connection.execute(
            text("CREATE TRIGGER slow_insert BEFORE INSERT ON task FOR EACH ROW EXECUTE FUNCTION slow_session_check()")
        )
    try:
        response = app.test_client().post("/api/tasks", headers=auth, json={"title": "slow"})
        assert response.status_code == 503
        assert response.get_json() == {"detail": "Service temporarily unavailable"}
        assert response.headers["Retry-After"] == "5"
        assert app.test_client().get("/api/tasks", headers=auth).get_json() == {"data": []}
    finally:
        with engine.connect() as connection:
            connection.execute(text("DROP TRIGGER slow_insert ON task"))
            connection.execute(text("DROP FUNCTION slow_session_check()"))


def test_a_connection_lost_inside_a_transaction_is_503_and_the_retry_creates_once(app, client, auth):
    """The backend dies between the key's claim and the task's insert: nothing was committed, the answer is a
    503 (never a 500 from ending a transaction on a dead connection), and the retry with the key creates it."""
    engine = get_engine(app)
    with engine.connect() as connection:
        connection.execute(
            text(
                "CREATE OR REPLACE FUNCTION lose_connection() RETURNS trigger AS $$ BEGIN "
                "IF NEW.title = 'doomed' AND NOT EXISTS (SELECT FROM pg_tables WHERE tablename = 'reprieve') THEN "
                "PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        connection.execute(
            text("CREATE TRIGGER lose_connection BEFORE INSERT ON task FOR EACH ROW EXECUTE FUNCTION lose_connection()")
        )
    headers = {**auth, "Idempotency-Key": "lost-connection"}
    try:
        lost = client.post("/api/tasks", headers=headers, json={"title": "doomed"})
        assert (lost.status_code, lost.get_json(), lost.headers["Retry-After"]) == (
            503,
            {"detail": "Service temporarily unavailable"},
            "5",
        )
        assert client.get("/api/tasks", headers=auth).get_json() == {"data": []}
        with engine.connect() as connection:
            connection.execute(text("CREATE TABLE reprieve ()"))
        retried = client.post("/api/tasks", headers=headers, json={"title": "doomed"})
        assert (retried.status_code, "Idempotent-Replayed" in retried.headers) == (200, False)
        assert [task["title"] for task in client.get("/api/tasks", headers=auth).get_json()["data"]] == ["doomed"]
    finally:
        with engine.connect() as connection:
            connection.execute(text("DROP TRIGGER lose_connection ON task"))
            connection.execute(text("DROP FUNCTION lose_connection()"))
            connection.execute(text("DROP TABLE IF EXISTS reprieve"))
