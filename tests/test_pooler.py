"""The service behind PgBouncer in transaction mode, as on Neon's pooled connection string.

Every database test also runs through the suite's pooler (the `pgbouncer`
backend); these tests check what only a pooler can get wrong: settings left on
a server connection that the next client of that connection inherits.
"""

from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from support import ADMIN_URL, base_config
from support.pgbouncer import Pooler, missing_requirement
from todo_api import create_app
from todo_api.db.connections import get_engine

POOLER_MISSING = missing_requirement()
pytestmark = pytest.mark.skipif(POOLER_MISSING is not None, reason=POOLER_MISSING or "")

SETTINGS = text("SELECT current_setting('TimeZone'), current_setting('statement_timeout'), pg_backend_pid()")


@pytest.fixture
def single_server_connection(postgres_url):
    """A PgBouncer whose pool holds one server connection: every client takes turns on it."""
    pooler = Pooler(ADMIN_URL, pool_size=1).start()
    yield pooler.url(postgres_url)
    pooler.stop()


@pytest.fixture
def pooled_apps(single_server_connection):
    apps = []

    def build(**overrides):
        apps.append(create_app(base_config(single_server_connection, **overrides)))
        return apps[-1]

    yield build
    for app in apps:
        get_engine(app).dispose()


def test_no_session_setting_leaks_between_clients_of_one_server_connection(single_server_connection, pooled_apps):
    fast = get_engine(pooled_apps(DATABASE_STATEMENT_TIMEOUT_MS=200)).connect()
    patient = get_engine(pooled_apps(DATABASE_STATEMENT_TIMEOUT_MS=5000)).connect()
    unbounded = get_engine(pooled_apps(DATABASE_STATEMENT_TIMEOUT_MS=0)).connect()
    # Another client of the same pooler leaves session settings on the one server connection.
    stranger = psycopg2.connect(single_server_connection)
    stranger.autocommit = True
    try:
        seen = []
        for _ in range(2):
            with stranger.cursor() as cursor:
                cursor.execute("SET TIME ZONE 'Asia/Tokyo'; SET statement_timeout = '42s'")
            seen += [
                fast.execute(SETTINGS).one(),
                patient.execute(SETTINGS).one(),
                unbounded.execute(SETTINGS).one(),
            ]
        assert len({pid for _, _, pid in seen}) == 1  # all on the one server connection
        assert [(zone, timeout) for zone, timeout, _ in seen] == [
            ("UTC", "200ms"),
            ("UTC", "5s"),
            ("UTC", "0"),
        ] * 2
        with pytest.raises(OperationalError, match="statement timeout"):
            fast.execute(text("SELECT pg_sleep(0.5)"))
        assert patient.execute(text("SELECT pg_sleep(0.3)")).scalar() == ""
        with stranger.cursor() as cursor:  # PgBouncer gives each client its own time zone back
            cursor.execute("SHOW TimeZone")
            assert cursor.fetchone() == ("Asia/Tokyo",)
    finally:
        stranger.close()
        for connection in (fast, patient, unbounded):
            connection.close()


def test_a_transaction_holds_the_server_connection_and_its_timeout_ends_with_it(pooled_apps):
    """Inside BEGIN ... COMMIT the server connection is the transaction's: another client waits for it, then
    finds none of the transaction's settings."""
    fast = get_engine(pooled_apps(DATABASE_STATEMENT_TIMEOUT_MS=200)).connect()
    patient = get_engine(pooled_apps(DATABASE_STATEMENT_TIMEOUT_MS=5000)).connect()
    try:
        patient.execute(SETTINGS)
        fast.exec_driver_sql("BEGIN")
        assert fast.execute(SETTINGS).one()[:2] == ("UTC", "200ms")
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(lambda: patient.execute(SETTINGS).one())
            with pytest.raises(OperationalError, match="statement timeout"):
                fast.execute(text("SELECT pg_sleep(0.5)"))
            assert not waiting.done()  # PgBouncer holds it back until the transaction ends
            fast.exec_driver_sql("ROLLBACK")
            assert waiting.result(timeout=10)[:2] == ("UTC", "5s")
    finally:
        fast.close()
        patient.close()


@pytest.mark.backends("pgbouncer")
def test_the_api_answers_through_pgbouncer(app, client, auth, pooler):
    assert get_engine(app).url.port == pooler.port
    created = client.post("/api/tasks", headers=auth, json={"title": "through the pooler", "tags": ["pg"]})
    assert created.status_code == 200
    task = created.get_json()["data"]
    assert (task["title"], task["tags"]) == ("through the pooler", ["pg"])
    listed = client.get("/api/tasks", headers=auth)
    assert (listed.status_code, listed.get_json()) == (200, {"data": [task]})
    database = get_engine(app).url.database
    assert f"login attempt: db={database} user=postgres" in pooler.log_text()


@pytest.mark.backends("pgbouncer")
def test_clients_share_the_pools_server_connections(app, auth, client, concurrently):
    """Eight requests at once hold eight pooled app connections; PgBouncer serves them on at most four."""
    assert client.get("/api/tasks", headers=auth).status_code == 200
    connections = [get_engine(app).connect() for _ in range(8)]
    try:
        pids = {connection.execute(text("SELECT pg_backend_pid()")).scalar() for connection in connections}
    finally:
        for connection in connections:
            connection.close()
    assert len(pids) <= 4
    responses = concurrently(lambda c: c.get("/api/tasks", headers=auth), 8)
    assert [response.status_code for response in responses] == [200] * 8
