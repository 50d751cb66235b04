"""Each statement carries its own timeout: nothing is left in the session for a pooler to leak."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from todo_api.db.connections import get_engine

pytestmark = pytest.mark.backends("postgres", "pgbouncer")  # statement timeouts are Postgres's


@pytest.fixture
def postgres_app(make_app):
    make_app()  # the first app cleans up after the test, without the short timeout
    return make_app(DATABASE_STATEMENT_TIMEOUT_MS=100)


def test_a_statement_over_the_timeout_is_cancelled(postgres_app):
    with get_engine(postgres_app).connect() as connection:
        with pytest.raises(OperationalError, match="statement timeout"):
            connection.execute(text("SELECT pg_sleep(0.5)"))


def test_a_statement_may_ask_for_its_own_timeout(postgres_app):
    with get_engine(postgres_app).connect() as connection:
        slow = text("SELECT pg_sleep(0.3)").execution_options(statement_timeout_ms=2000)
        assert connection.execute(slow).scalar() == ""
        with pytest.raises(OperationalError, match="statement timeout"):
            connection.execute(text("SELECT pg_sleep(0.2)").execution_options(statement_timeout_ms=50))


def test_the_timeout_ends_with_the_statement(postgres_app):
    with get_engine(postgres_app).connect() as connection:
        connection.execute(text("SELECT 1"))
        raw = connection.connection.dbapi_connection
        with raw.cursor() as cursor:  # straight to the driver: no timeout prefixed
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone() == ("0",)
            cursor.execute("SHOW TimeZone")
            assert cursor.fetchone() == ("UTC",)


def test_a_timeout_applies_inside_a_transaction(postgres_app):
    with get_engine(postgres_app).connect() as connection:
        connection.exec_driver_sql("BEGIN")
        with pytest.raises(OperationalError, match="statement timeout"):
            connection.execute(text("SELECT pg_sleep(0.5)"))
        connection.exec_driver_sql("ROLLBACK")
