"""The task change log: one row per task a transaction changed, written by the database itself.

`GET /api/tasks/changes` answers from it (see `tasks.changes`). A trigger on
`task` records every insert, update and delete, whichever code made it (a
route, a batch, the reminder worker, a time zone change, a hand-written
UPDATE), so no change can be missed by a path that forgot to record it.

- `txid`: on Postgres, the 64-bit id of the writing transaction
  (`pg_current_xact_id()`); a reader tells the changes its snapshot could not
  see yet from those it could (`pg_visible_in_snapshot`), so no change that
  commits late is skipped. On SQLite, which has one writer at a time, a
  counter taken inside the writing transaction: commit order.
- A row per (user, transaction, task): a task that moves to another user (no
  route does that) is recorded for both.
- Rows are append-only and small, in their own table: the task table keeps
  its in-place (HOT) updates, which an index on a change column of its own
  would end (see 0008). Rows older than SYNC_RETENTION_DAYS are purged.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

POSTGRES_FUNCTION = """
CREATE FUNCTION todo_record_task_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    stamp bigint := pg_current_xact_id()::text::bigint;
    at timestamp := timezone('UTC', now());
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO task_change (user_id, txid, task_id, changed_at)
        VALUES (OLD.user_id, stamp, OLD.id, at) ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF TG_OP = 'INSERT' OR NEW.user_id IS DISTINCT FROM OLD.user_id OR NEW.id <> OLD.id THEN
            INSERT INTO task_change (user_id, txid, task_id, changed_at)
            VALUES (NEW.user_id, stamp, NEW.id, at) ON CONFLICT DO NOTHING;
        END IF;
        RETURN NEW;
    END IF;
    RETURN OLD;
END $$
"""
POSTGRES_TRIGGER = """
CREATE TRIGGER task_change AFTER INSERT OR UPDATE OR DELETE ON task
FOR EACH ROW EXECUTE FUNCTION todo_record_task_change()
"""

# SQLite: the counter row is taken and moved inside the writing transaction (SQLite's write lock).
SQLITE_RECORD = """
UPDATE task_change_counter SET value = value + 1;
INSERT OR IGNORE INTO task_change (user_id, txid, task_id, changed_at)
VALUES ({row}.user_id, (SELECT value FROM task_change_counter), {row}.id, strftime('%Y-%m-%d %H:%M:%f000', 'now'));
"""
SQLITE_TRIGGERS = {
    "task_change_insert": ("AFTER INSERT", ["NEW"]),
    "task_change_update": ("AFTER UPDATE", ["NEW"]),
    "task_change_delete": ("AFTER DELETE", ["OLD"]),
}


def upgrade():
    op.create_table(
        "task_change",
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "txid", "task_id", name="pk_task_change"),
    )
    op.create_index("ix_task_change_changed_at", "task_change", ["changed_at"])
    # Read by SQLite's triggers only; one row on Postgres too, so that both hold the same tables.
    op.create_table("task_change_counter", sa.Column("value", sa.BigInteger(), nullable=False))
    op.execute("INSERT INTO task_change_counter (value) VALUES (0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(POSTGRES_TRIGGER)
        return
    for name, (when, rows) in SQLITE_TRIGGERS.items():
        body = "".join(SQLITE_RECORD.format(row=row) for row in rows)
        op.execute(f"CREATE TRIGGER {name} {when} ON task BEGIN {body} END")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER task_change ON task")
        op.execute("DROP FUNCTION todo_record_task_change()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("task_change_counter")
    op.drop_index("ix_task_change_changed_at", table_name="task_change")
    op.drop_table("task_change")
