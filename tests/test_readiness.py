"""`/health/ready`: 200 only when the database answers and holds the schema this release needs; else 503 with
a `detail` that says what is missing and what to run."""

import pytest
from sqlalchemy import text

from support import StatementLog, base_config
from todo_api import create_app
from todo_api.db.connections import get_engine
from todo_api.db.schema import migration_revisions

UPGRADE = "run `flask --app todo_api db upgrade`"
BETTER_AUTH = (
    "The database lacks Better Auth's table session: run Better Auth's migrations (`npx @better-auth/cli migrate`), "
    "or set SESSION_TABLE and the SESSION_*_COLUMN variables to the names Better Auth was configured with."
)
EVERY_TABLE = (
    "table alembic_version, table idempotency_key, table push_subscription, table task, table task_change, "
    "table task_change_counter, table user_settings, table push_delivery"
)


@pytest.fixture
def fresh(backend, request, tmp_path):
    """An app on a new, empty database of this backend (through PgBouncer: pooled DATABASE_URL, direct
    DATABASE_MIGRATION_URL), and `run(*args)` for its commands."""
    if backend == "sqlite":
        url, migration_url = f"sqlite:///{tmp_path / 'fresh.sqlite'}", None
    else:
        migration_url = request.getfixturevalue("empty_postgres_url")
        url = request.getfixturevalue("pooler").url(migration_url) if backend == "pgbouncer" else migration_url
    app = create_app(base_config(url, DATABASE_MIGRATION_URL=migration_url))

    def run(*args):
        result = app.test_cli_runner().invoke(args=list(args))
        assert result.exit_code == 0, result.output

    app.run_command = run
    yield app
    get_engine(app).dispose()


def readiness(app):
    response = app.test_client().get("/health/ready")
    return response.status_code, response.get_json()


def sql(app, statement):
    with get_engine(app).connect() as connection:
        connection.execute(text(statement))
        connection.commit()


def test_a_migrated_database_with_the_session_table_is_ready(fresh):
    fresh.run_command("init-db", "--auth-tables")
    assert readiness(fresh) == (200, {"status": "ready"})


def test_an_empty_database_is_not_ready_and_says_what_to_run(fresh):
    """The issue's case: an empty database (a fresh SQLite file, or a Postgres nobody migrated) answered ready."""
    assert readiness(fresh) == (503, {"detail": f"The database lacks {EVERY_TABLE}: {UPGRADE}. {BETTER_AUTH}"})


def test_without_better_auths_session_table_it_is_not_ready(fresh):
    fresh.run_command("init-db", "--no-auth-tables")
    assert readiness(fresh) == (503, {"detail": BETTER_AUTH})


def test_a_session_column_under_another_name_is_named(fresh):
    fresh.run_command("init-db", "--auth-tables")
    misnamed = create_app(base_config(fresh.config["DATABASE_URL"], SESSION_EXPIRES_AT_COLUMN="expires_at"))
    try:
        assert readiness(misnamed) == (
            503,
            {
                "detail": "The database lacks Better Auth's column session.expires_at: run Better Auth's migrations "
                "(`npx @better-auth/cli migrate`), or set SESSION_TABLE and the SESSION_*_COLUMN variables to the "
                "names Better Auth was configured with."
            },
        )
    finally:
        get_engine(misnamed).dispose()


def test_an_older_schema_that_lacks_columns_names_them(fresh):
    fresh.run_command("init-db", "--auth-tables")
    fresh.run_command("db", "downgrade", "0006")
    assert readiness(fresh) == (
        503,
        {
            "detail": "The database lacks column task.due_all_day, column task.due_local, column task.remind_local, "
            f"column task.recurs_from, table task_change, table task_change_counter: {UPGRADE}."
        },
    )


def test_a_schema_one_migration_behind_is_not_ready(fresh):
    """A migration that adds no column (0008: indexes and a fillfactor) leaves only the revision to tell: here the
    tables and columns are all there and the recorded revision is an older one."""
    fresh.run_command("init-db", "--auth-tables")
    head, _ = migration_revisions()
    sql(fresh, "UPDATE alembic_version SET version_num = '0007'")
    assert readiness(fresh) == (
        503,
        {"detail": f"The database schema is at migration 0007, this release needs {head}: {UPGRADE}."},
    )
    sql(fresh, f"UPDATE alembic_version SET version_num = '{head}'")
    assert readiness(fresh) == (200, {"status": "ready"})


def test_no_recorded_migration_is_not_ready(fresh):
    fresh.run_command("init-db", "--auth-tables")
    sql(fresh, "DELETE FROM alembic_version")
    assert readiness(fresh) == (503, {"detail": f"No migration has run on this database: {UPGRADE}."})


def test_a_later_releases_migration_is_ready_while_every_column_is_there(fresh):
    """A rollback of the code after a newer release migrated: its schema has everything this release reads."""
    fresh.run_command("init-db", "--auth-tables")
    sql(fresh, "UPDATE alembic_version SET version_num = '0042'")
    assert readiness(fresh) == (200, {"status": "ready"})


def test_the_probe_is_one_statement(app, client):
    """As cheap as the `SELECT 1` it replaces: one round trip, answered from the catalog."""
    statements = StatementLog(app)
    try:
        assert (client.get("/health/ready").status_code, statements.statements) == (200, ["SELECT"])
    finally:
        statements.close()
