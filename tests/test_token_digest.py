"""Sessions are looked up by the digest of their token: no SQL the service sends holds a token.

On Postgres an expression index on Better Auth's session table serves the
lookup (migration 0005); it must be harmless to Better Auth, and it must exist
whichever came first, the session table or the migration.
"""

import hashlib

import pytest
from sqlalchemy import event, text

from support import base_config
from todo_api import create_app
from todo_api.db.connections import get_engine
from todo_api.db.migrate import current_revision, downgrade, upgrade
from todo_api.db.token_digest import token_digest

postgres_only = pytest.mark.backends("postgres", "pgbouncer")
INDEX_DEFINITION = "CREATE INDEX ix_session_token_digest ON public.session USING btree (todo_api_token_digest(token))"
BETTER_AUTH_SESSION_TABLE = """
CREATE TABLE "user" (id text PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
                     "emailVerified" boolean NOT NULL, image text,
                     "createdAt" timestamptz NOT NULL DEFAULT now(), "updatedAt" timestamptz NOT NULL DEFAULT now());
CREATE TABLE "session" (id text PRIMARY KEY, "expiresAt" timestamptz NOT NULL, token text NOT NULL UNIQUE,
                        "createdAt" timestamptz NOT NULL DEFAULT now(), "updatedAt" timestamptz NOT NULL,
                        "ipAddress" text, "userAgent" text,
                        "userId" text NOT NULL REFERENCES "user"(id) ON DELETE CASCADE);
INSERT INTO "user" (id, name, email, "emailVerified") VALUES ('u1', 'U', 'u@example.com', false);
INSERT INTO "session" (id, "expiresAt", token, "updatedAt", "userId")
VALUES ('s1', now() + interval '1 day', 'T0kenMadeBeforeTheIndex0000000000', now(), 'u1');
"""


class SentStatements:
    """Every statement as the driver sent it: psycopg2's with the parameters interpolated, sqlite3's beside them."""

    def __init__(self, app):
        self.engine, self.sent = get_engine(app), []
        event.listen(self.engine, "after_cursor_execute", self.record)

    def record(self, _connection, cursor, statement, parameters, *_args):
        query = getattr(cursor, "query", None)
        self.sent.append(query.decode() if query is not None else f"{statement} {parameters!r}")

    def close(self):
        event.remove(self.engine, "after_cursor_execute", self.record)


def index_definitions(engine, table="session"):
    with engine.connect() as connection:
        return (
            connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE tablename = :table AND indexname LIKE '%token_digest'"),
                {"table": table},
            )
            .scalars()
            .all()
        )


@pytest.fixture
def fresh_app(empty_postgres_url):
    app = create_app(base_config(empty_postgres_url))
    yield app
    get_engine(app).dispose()


def cli(app, *args):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_digest_is_sha256_of_the_tokens_utf8_bytes():
    assert token_digest("abc") == hashlib.sha256(b"abc").digest()
    assert token_digest("é") == hashlib.sha256("é".encode()).digest()


def test_the_database_computes_the_same_digest(app):
    with get_engine(app).connect() as connection:
        computed = connection.execute(text("SELECT todo_api_token_digest(:token)"), {"token": "Tok3n-é"}).scalar()
    assert bytes(computed) == token_digest("Tok3n-é")


def test_no_statement_holds_the_token(app, client, token, auth, create_task, backend):
    sent = SentStatements(app)
    try:
        create_task(title="mine")
        assert client.get("/api/tasks", headers=auth).status_code == 200
    finally:
        sent.close()
    # Two requests: the session lookup and the insert (which checks the session too), then the list (which does).
    assert len(sent.sent) == 3
    assert not [statement for statement in sent.sent if token in statement or token[:8] in statement]
    lookups = [statement for statement in sent.sent if "todo_api_token_digest(" in statement]
    assert len(lookups) == 3
    if backend != "sqlite":  # the digest is a bytea literal (SQLite's statements keep their placeholders)
        assert all(f"'\\x{token_digest(token).hex()}'::bytea" in statement for statement in lookups)


@postgres_only
def test_the_session_table_is_indexed_by_token_digest(app):
    assert index_definitions(get_engine(app)) == [INDEX_DEFINITION]


@postgres_only
def test_any_text_token_indexes_and_the_lookup_finds_exactly_it(app, client):
    """Better Auth owns the table: whatever text it stores as a token must insert fine."""
    odd = ["", "é" * 3000, "x" * 100_000, "with space", "quote'\"", "\\x00"]
    with get_engine(app).begin() as connection:
        connection.execute(
            text("INSERT INTO \"user\" (id, name, email, \"emailVerified\") VALUES ('o', 'O', 'o@x', false)")
        )
        for number, value in enumerate(odd):
            connection.execute(
                text(
                    'INSERT INTO "session" (id, "expiresAt", token, "updatedAt", "userId") '
                    "VALUES (:id, now() + interval '1 day', :token, now(), 'o')"
                ),
                {"id": f"odd-{number}", "token": value},
            )
    for credential, status in [("with space", 200), ("quote'\"", 200), ("with", 401), ("x" * 500, 401)]:
        response = client.get("/api/tasks", headers={"Authorization": f"Bearer {credential}"})
        assert (credential[:10], response.status_code) == (credential[:10], status)


@postgres_only
def test_downgrade_drops_the_index_and_the_function_and_upgrade_makes_them_again(app, client, auth):
    engine = get_engine(app)
    downgrade(engine, "0004")
    assert index_definitions(engine) == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT to_regprocedure('todo_api_token_digest(text)')")).scalar() is None
    upgrade(engine)
    assert index_definitions(engine) == [INDEX_DEFINITION]
    assert client.get("/api/tasks", headers=auth).status_code == 200


def test_a_session_table_made_by_better_auth_before_the_migrations_is_indexed(fresh_app):
    with get_engine(fresh_app).begin() as connection:
        connection.execute(text(BETTER_AUTH_SESSION_TABLE))
    assert cli(fresh_app, "db", "upgrade") == "Database at revision 0010.\n"
    assert index_definitions(get_engine(fresh_app)) == [INDEX_DEFINITION]
    response = fresh_app.test_client().get(
        "/api/tasks", headers={"Authorization": "Bearer T0kenMadeBeforeTheIndex0000000000"}
    )
    assert (response.status_code, response.get_json()) == (200, {"data": []})


def test_a_session_table_made_after_the_migrations_is_indexed_by_the_next_upgrade(fresh_app):
    """Better Auth's own migrations may run after ours: the next `db upgrade` adds the index."""
    assert cli(fresh_app, "db", "upgrade") == "Database at revision 0010.\n"
    with get_engine(fresh_app).begin() as connection:
        connection.execute(text(BETTER_AUTH_SESSION_TABLE))
    assert index_definitions(get_engine(fresh_app)) == []
    assert cli(fresh_app, "db", "upgrade") == "Database at revision 0010.\n"
    assert index_definitions(get_engine(fresh_app)) == [INDEX_DEFINITION]


def test_init_db_with_auth_tables_indexes_them_on_an_empty_database_and_after_a_plain_init(fresh_app):
    assert cli(fresh_app, "init-db") == "Initialized the database (postgresql).\n"
    assert index_definitions(get_engine(fresh_app)) == []  # no session table yet
    assert cli(fresh_app, "init-db", "--auth-tables") == "Initialized the database (postgresql).\n"
    assert index_definitions(get_engine(fresh_app)) == [INDEX_DEFINITION]
    assert current_revision(get_engine(fresh_app)) == "0010"


def test_a_custom_session_table_is_indexed_under_its_own_names(empty_postgres_url):
    app = create_app(
        base_config(empty_postgres_url, SESSION_TABLE="auth_sessions", SESSION_TOKEN_COLUMN="sessionToken")
    )
    try:
        with get_engine(app).begin() as connection:
            connection.execute(
                text(
                    'CREATE TABLE auth_sessions (id text PRIMARY KEY, "sessionToken" text NOT NULL UNIQUE,'
                    ' "userId" text NOT NULL, "expiresAt" timestamptz NOT NULL)'
                )
            )
        assert cli(app, "init-db") == "Initialized the database (postgresql).\n"
        assert index_definitions(get_engine(app), "auth_sessions") == [
            "CREATE INDEX ix_auth_sessions_token_digest ON public.auth_sessions "
            'USING btree (todo_api_token_digest("sessionToken"))'
        ]
        assert cli(app, "db", "downgrade", "0004") == "Database at revision 0004.\n"
        assert index_definitions(get_engine(app), "auth_sessions") == []
    finally:
        get_engine(app).dispose()
