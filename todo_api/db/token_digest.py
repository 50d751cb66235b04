"""Session tokens are looked up by their SHA-256 digest, never by the token itself.

psycopg2 writes parameter values into the statement text on the client, so a
statement that fails on the server (a lock wait past the statement timeout, a
cancel, a shutdown) reaches Postgres's log with its values in it. A lookup by
token would leave live session tokens in the database's log; a lookup by
digest leaves a value that is no credential. The digest is computed here and
compared with `todo_api_token_digest(token)`, which an expression index on
Better Auth's session table serves on Postgres (migration 0005). On SQLite the
function is registered on every connection and no index is made: Better Auth
may write that table from a process that does not know the function.
"""

import hashlib

from sqlalchemy import inspect, text

FUNCTION = "todo_api_token_digest"
# convert_to() is only STABLE (it depends on the encoding settings), and an index needs an IMMUTABLE function:
# the wrapper pins UTF-8, so it is. Not inlined (its body is not immutable), so the index expression matches.
CREATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(text) RETURNS bytea
AS $$ SELECT sha256(convert_to($1, 'UTF8')) $$
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
"""
DROP_FUNCTION = f"DROP FUNCTION IF EXISTS {FUNCTION}(text)"
MAX_IDENTIFIER_LENGTH = 63


def token_digest(token):
    """What the lookup compares: SHA-256 of the token's UTF-8 bytes."""
    return hashlib.sha256(token.encode()).digest()


def sqlite_token_digest(value):
    """`todo_api_token_digest` on SQLite, the same digest as Postgres's."""
    if value is None:
        return None
    return hashlib.sha256(value.encode() if isinstance(value, str) else bytes(value)).digest()


def session_names(app_config=None):
    """(table, token column) of Better Auth's sessions, as the app is configured (by default, the environment)."""
    if app_config is None:
        from todo_api.config import from_environment

        app_config = from_environment()
    return app_config["SESSION_TABLE"], app_config["SESSION_TOKEN_COLUMN"]


def index_name(table):
    return f"ix_{table}_token_digest"[:MAX_IDENTIFIER_LENGTH]


def create_index(connection, names):
    """Index the session table by token digest, once the function exists and if the table does.

    Returns whether the index was created now. It is checked for first, so an
    existing index costs no lock on Better Auth's table.
    """
    if connection.dialect.name != "postgresql":
        return False
    table, column = names
    exists = connection.execute(
        text("SELECT to_regprocedure(:function) IS NOT NULL, to_regclass(:index) IS NOT NULL"),
        {"function": f"{FUNCTION}(text)", "index": _quote(connection, index_name(table))},
    ).one()
    if not exists[0] or exists[1] or not inspect(connection).has_table(table):
        return False
    connection.execute(
        text(
            f"CREATE INDEX {_quote(connection, index_name(table))} ON {_quote(connection, table)} "
            f"({FUNCTION}({_quote(connection, column)}))"
        )
    )
    return True


def drop_index(connection, names):
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"DROP INDEX IF EXISTS {_quote(connection, index_name(names[0]))}"))


def _quote(connection, name):
    return connection.dialect.identifier_preparer.quote(name)
