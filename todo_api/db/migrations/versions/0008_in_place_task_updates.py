"""Task updates that Postgres can make in place (HOT): no index names `updated_at` or `completed`.

Postgres writes a new version of a row on every UPDATE. When no column that an
index names (as a key, in an expression or in a partial index's WHERE) changes,
and the row's page has room, the new version is a heap-only tuple (HOT): it
stays on the same page and no index is touched. Otherwise each of the task
table's indexes gets a new entry: thirteen before this revision, two of them
trigram GIN indexes.

Every write moves `updated_at` (the task's version), and a toggle also flips
`completed`, so until now no task update was HOT. This revision:

- drops `ix_task_user_updated` (user_id, updated_at, id). A list sorted by
  `updated_at`, which the frontend does not offer, then sorts the caller's
  rows, found by another `user_id` index: about 0.04 ms for 100 tasks, 0.2 ms
  for 1,000 and 2 ms for 10,000 (`bench/hot_updates.py`).
- on Postgres, rebuilds the reminder worker's two partial indexes (0006)
  without `NOT completed` in their WHERE: they hold every task whose reminder
  has not been sent. The worker's claim still skips completed tasks, after
  reading them, so its cost now grows with the completed tasks whose reminder
  never went out (completed before it came due, or of users without a push
  subscription): about 8 ms more per pass for 100,000 of them, 90 ms for a
  million.
- on Postgres, sets the table's fillfactor to 90: pages are filled to 90%, so
  the first update of a row finds room for its new version on its page (at
  100%, 5 to 40% of first toggles were not HOT; 80 did no better than 90). It
  applies to pages written from now on; `VACUUM FULL task` (which locks the
  table while it rewrites it) applies it to the existing ones.

A toggle, a completion or an edit of category or tags is then HOT: about 180
bytes of WAL per toggle instead of 2,000 to 3,000. On SQLite, which has no HOT,
only the `updated_at` index goes (one index fewer to write on every change).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FILLFACTOR = 90
REMINDER_INDEXES = {
    # name: (column, the rows it holds before this revision, from it on)
    "ix_task_reminder_at": ("remind_at", "NOT reminder_sent AND NOT completed", "NOT reminder_sent"),
    "ix_task_reminder_due_date": (
        "due_date",
        "remind_at IS NULL AND NOT reminder_sent AND NOT completed",
        "remind_at IS NULL AND NOT reminder_sent",
    ),
}


def rebuild_reminder_indexes(rows):
    """Replace each reminder index by one on the same column holding `rows(index)`."""
    for name, spec in REMINDER_INDEXES.items():
        op.drop_index(name, table_name="task")
        op.create_index(name, "task", [spec[0]], postgresql_where=sa.text(rows(spec)))


def upgrade():
    op.drop_index("ix_task_user_updated", table_name="task")
    if op.get_bind().dialect.name != "postgresql":
        return
    rebuild_reminder_indexes(lambda spec: spec[2])
    op.execute(f"ALTER TABLE task SET (fillfactor = {FILLFACTOR})")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE task RESET (fillfactor)")
        rebuild_reminder_indexes(lambda spec: spec[1])
    op.create_index("ix_task_user_updated", "task", ["user_id", "updated_at", "id"])
