"""User settings, Web Push subscriptions, and the reminders waiting to be pushed.

`user_settings` holds a user's time zone (no row: UTC). `push_subscription`
holds one row per browser endpoint; an endpoint belongs to one user at a time.
`push_delivery` holds one due reminder per subscription until the push
service has taken it: the reminder worker claims rows by `next_attempt_at`
(a claim pushes it forward by a lease; a retry by the backoff). Two partial
indexes on `task` let the worker find due reminders without scanning the
tasks whose reminders are sent or that are completed.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def unsent(dialect):
    """The rows whose reminder may still come due."""
    if dialect == "postgresql":
        return "NOT reminder_sent AND NOT completed"
    return "reminder_sent = 0 AND completed = 0"


def upgrade():
    op.create_table(
        "user_settings",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("time_zone", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "push_subscription",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("p256dh", sa.Text, nullable=False),
        sa.Column("auth", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("endpoint", name="uq_push_subscription_endpoint"),
    )
    op.create_index("ix_push_subscription_user", "push_subscription", ["user_id"])
    op.create_table(
        "push_delivery",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("task.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "subscription_id", sa.Integer, sa.ForeignKey("push_subscription.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("remind_at", sa.DateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("claim_token", sa.String(32)),
        sa.UniqueConstraint("task_id", "subscription_id", name="uq_push_delivery_task_subscription"),
    )
    op.create_index("ix_push_delivery_next_attempt", "push_delivery", ["next_attempt_at"])
    op.create_index("ix_push_delivery_subscription", "push_delivery", ["subscription_id"])
    where = sa.text(unsent(op.get_bind().dialect.name))
    op.create_index("ix_task_reminder_at", "task", ["remind_at"], postgresql_where=where, sqlite_where=where)
    due_where = sa.text(f"remind_at IS NULL AND {unsent(op.get_bind().dialect.name)}")
    op.create_index(
        "ix_task_reminder_due_date", "task", ["due_date"], postgresql_where=due_where, sqlite_where=due_where
    )


def downgrade():
    op.drop_index("ix_task_reminder_due_date", table_name="task")
    op.drop_index("ix_task_reminder_at", table_name="task")
    op.drop_index("ix_push_delivery_subscription", table_name="push_delivery")
    op.drop_index("ix_push_delivery_next_attempt", table_name="push_delivery")
    op.drop_table("push_delivery")
    op.drop_index("ix_push_subscription_user", table_name="push_subscription")
    op.drop_table("push_subscription")
    op.drop_table("user_settings")
