"""Due dates, recurrence and reminders; the indexes every list query needs.

Each list query is a range scan of one user's rows in the order asked for:
one index per sort key, with the id as the tie-breaker.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PRIORITY_RANK = "(CASE priority WHEN 'low' THEN 0 WHEN 'medium' THEN 1 WHEN 'high' THEN 2 END)"


def upgrade():
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("due_date", sa.DateTime))
        batch.add_column(sa.Column("recurrence_pattern", sa.String(10)))
        batch.add_column(sa.Column("remind_at", sa.DateTime))
        batch.add_column(sa.Column("reminder_sent", sa.Boolean, nullable=False, server_default=sa.false()))
    op.drop_index("ix_task_user_id", table_name="task")
    op.create_index("ix_task_user_id_id", "task", ["user_id", "id"])
    op.create_index("ix_task_user_created", "task", ["user_id", "created_at", "id"])
    op.create_index("ix_task_user_updated", "task", ["user_id", "updated_at", "id"])
    op.create_index("ix_task_user_title", "task", ["user_id", "title", "id"])
    op.create_index("ix_task_user_priority", "task", ["user_id", sa.text(PRIORITY_RANK), "id"])
    # Tasks without a due date sort last in both directions: one index per direction.
    # (SQLite sorts NULL first and knows no NULLS LAST in an index.)
    nulls_last = " NULLS LAST" if op.get_bind().dialect.name == "postgresql" else ""
    op.create_index("ix_task_user_due_asc", "task", ["user_id", "due_date", "id"])
    op.create_index(
        "ix_task_user_due_desc", "task", ["user_id", sa.text(f"due_date DESC{nulls_last}"), sa.text("id DESC")]
    )
    op.create_index(
        "ix_task_user_reminder_due",
        "task",
        ["user_id", "remind_at"],
        postgresql_where=sa.text("NOT reminder_sent"),
        sqlite_where=sa.text("reminder_sent = 0"),
    )


def downgrade():
    for name in [
        "ix_task_user_reminder_due",
        "ix_task_user_due_desc",
        "ix_task_user_due_asc",
        "ix_task_user_priority",
        "ix_task_user_title",
        "ix_task_user_updated",
        "ix_task_user_created",
        "ix_task_user_id_id",
    ]:
        op.drop_index(name, table_name="task")
    op.create_index("ix_task_user_id", "task", ["user_id"])
    with op.batch_alter_table("task") as batch:
        for column in ["reminder_sent", "remind_at", "recurrence_pattern", "due_date"]:
            batch.drop_column(column)
