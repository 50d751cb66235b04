"""Each thread keeps its connection between requests (todo_api/db/connections.py), and the hot statements run on the
driver's cursor exactly as SQLAlchemy would run them (todo_api/db/driver.py)."""

import threading

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from support import ADMIN_URL
from todo_api.auth.sessions import Caller, get_sessions
from todo_api.db.connections import get_db, get_engine
from todo_api.db.driver import run_on_driver
from todo_api.db.engine import in_transaction, normalize_url
from todo_api.db.token_digest import token_digest
from todo_api.tasks import listing
from todo_api.tasks import store as task_store


def checked_out(app):
    return get_engine(app).pool.checkedout()


def test_a_thread_keeps_its_connection_from_one_request_to_the_next(app, client, auth):
    with app.app_context():
        first = get_db()
    assert checked_out(app) == 1
    assert client.get("/api/tasks", headers=auth).status_code == 200
    with app.app_context():
        assert get_db() is first
    assert checked_out(app) == 1


def test_no_request_leaves_a_transaction_open(app):
    with app.app_context():
        connection = get_db()
        connection.exec_driver_sql("BEGIN")
        connection.exec_driver_sql("SELECT 1")
        assert in_transaction(connection.connection.dbapi_connection) is True
    assert in_transaction(connection.connection.dbapi_connection) is False
    with app.app_context():
        assert get_db() is connection  # kept: it was only rolled back


@pytest.mark.backends("postgres", "pgbouncer")  # DATABASE_POOL_SIZE sizes the Postgres pool
def test_past_the_pool_size_a_thread_gives_its_connection_back_after_each_request(make_app):
    app = make_app(DATABASE_POOL_SIZE=1)
    with app.app_context():
        get_db()
        assert checked_out(app) == 1
    assert checked_out(app) == 0


def test_a_thread_that_ends_gives_its_connection_back(app, auth):
    statuses = []
    thread = threading.Thread(target=lambda: statuses.append(app.test_client().get("/api/tasks", headers=auth)))
    thread.start()
    thread.join()
    assert [response.status_code for response in statuses] == [200]
    assert checked_out(app) == 0


def test_disposing_the_engine_gives_back_every_thread_connection(app):
    with app.app_context():
        connection = get_db()
    get_engine(app).dispose()
    assert connection.closed is True
    with app.app_context():
        assert get_db() is not connection


@pytest.fixture
def hot_statements(app, client, auth, token, create_task):
    """Each hot route's SELECT with its parameters, under the caller's session."""
    task_id = create_task(title="Read me", tags=["a", "b"], due_date="2026-12-01T09:30:00Z")["id"]
    create_task(title="And me", priority="high")
    with app.app_context():
        user_id = get_db().exec_driver_sql("SELECT user_id FROM task LIMIT 1").scalar()
    caller = Caller(user_id, token_digest(token), get_sessions(app).guard, confirmed=True)
    return [
        (listing.plain_list_statement("all", "created_at", True, caller.guard), {**caller.params, "page_limit": 1001}),
        (listing.plain_list_statement("pending", "priority", False, caller.guard), {**caller.params, "page_limit": 2}),
        (caller.guarded(task_store._SELECT), {**caller.params, "task_key": task_id}),
        (caller.guarded(task_store._SELECT), {**caller.params, "task_key": task_id + 100}),
    ]


def test_the_driver_reads_the_rows_sqlalchemy_reads(app, hot_statements):
    with app.app_context():
        db = get_db()
        for statement, params in hot_statements:
            expected = db.execute(statement, params).all()
            rows = run_on_driver(db, statement, params)
            assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
            assert [dict(row._mapping) for row in rows] == [dict(row._mapping) for row in expected]
            assert [row.title for row in rows] == [row.title for row in expected]


@pytest.mark.backends("postgres", "pgbouncer")
def test_the_driver_raises_sqlalchemy_errors(app, token, create_task):
    task_id = create_task()["id"]
    with app.app_context():
        db = get_db()
        user_id = db.exec_driver_sql("SELECT user_id FROM task LIMIT 1").scalar()
        insert = task_store._insert_guarded(get_sessions(app).guard, False)
        row = db.execute(task_store._SELECT, {"task_key": task_id, "owner_id": user_id}).one()
        values = {**row._mapping, "owner_id": user_id, "digest": token_digest(token), "title": None}  # NOT NULL
        with pytest.raises(IntegrityError) as refused:
            run_on_driver(db, insert, values)
        assert refused.value.connection_invalidated is False
        assert db.invalidated is False


@pytest.mark.backends("postgres")
def test_the_driver_invalidates_a_connection_the_server_dropped(app, client, auth):
    assert client.get("/api/tasks", headers=auth).status_code == 200
    with app.app_context():
        db = get_db()
        pid = db.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        admin = create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar() is True
        admin.dispose()
        statement = listing.plain_list_statement("all", "created_at", True, get_sessions(app).guard)
        params = {"owner_id": "x", "digest": b"x", "page_limit": 2}
        with pytest.raises(DBAPIError) as dropped:
            run_on_driver(db, statement, params)
        assert dropped.value.connection_invalidated is True
        assert db.invalidated is True
    assert client.get("/api/tasks", headers=auth).status_code == 200  # the next request checks out another
