"""Sessions are looked up by the digest of their token (see todo_api/db/token_digest.py).

Creates the IMMUTABLE function `todo_api_token_digest(text)` and, on Better
Auth's session table (SESSION_TABLE, SESSION_TOKEN_COLUMN, read from the app's
configuration), the expression index `ix_<table>_token_digest` that serves the
lookup. Better Auth owns that table: the index only reads its token column,
accepts any text, and is dropped on downgrade. When the session table does not
exist yet, the index is left out here and made by the next `flask db upgrade`
or `init-db` that finds the table (`database.upgrade` checks after every
migration run). Postgres only: SQLite registers the function on each connection.

Revision ID: 0005
Revises: 0004
"""

from alembic import context, op

from todo_api.db import token_digest

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _session_names():
    return token_digest.session_names(context.config.attributes.get("app_config"))


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(token_digest.CREATE_FUNCTION)
    token_digest.create_index(bind, _session_names())


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    token_digest.drop_index(bind, _session_names())
    op.execute(token_digest.DROP_FUNCTION)
