"""Trigram indexes for keyword search on Postgres.

`q` is a case-insensitive substring match (ILIKE '%word%'). A btree index
cannot serve a leading wildcard; pg_trgm's GIN indexes can, for any
substring of three characters or more. With btree_gin the index leads with
user_id, so it finds only the caller's matches, not every user's. On SQLite
the search is a LIKE over the caller's rows. Where the extensions cannot be
created (no privilege), the search still works, unindexed.

Revision ID: 0003
Revises: 0002
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS btree_gin"))
    except sa.exc.DBAPIError:
        log.warning("pg_trgm or btree_gin is not available: keyword search will not be indexed")
        return
    op.execute("CREATE INDEX ix_task_title_trgm ON task USING gin (user_id, title gin_trgm_ops)")
    op.execute("CREATE INDEX ix_task_description_trgm ON task USING gin (user_id, description gin_trgm_ops)")


def downgrade():
    op.execute("DROP INDEX IF EXISTS ix_task_description_trgm")
    op.execute("DROP INDEX IF EXISTS ix_task_title_trgm")
