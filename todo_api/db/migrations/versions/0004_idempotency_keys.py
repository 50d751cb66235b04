"""Idempotency keys of `POST /api/tasks`: one row per user and key, kept 24 hours.

The primary key (user_id, key) is what makes concurrent retries with one key
create exactly one task. The (user_id, created_at) index serves the cleanup of
a user's expired keys.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "idempotency_key",
        sa.Column("user_id", sa.String, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("task_id", sa.Integer),
        sa.Column("response", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key", name="pk_idempotency_key"),
    )
    op.create_index("ix_idempotency_key_user_created", "idempotency_key", ["user_id", "created_at"])


def downgrade():
    op.drop_index("ix_idempotency_key_user_created", table_name="idempotency_key")
    op.drop_table("idempotency_key")
