"""One next occurrence per occurrence of a recurring task.

`task.recurs_from`, on a next occurrence, is the id of the occurrence whose
completion made it; a unique index on it lets the database refuse a second next
occurrence of the same occurrence (see `task_store._insert_next_occurrence`).
A plain id, without a foreign key: a next occurrence outlives the deletion of
the occurrence it came from, and task ids are not reused while a task with a
higher id exists (SERIAL on Postgres, the largest rowid plus one on SQLite), so
a link never points to a task that took a deleted one's id.

Existing rows get NULL: they came from no completion that this column saw.
Both databases allow any number of NULLs under a unique index. A next
occurrence made before this revision is therefore not linked to its
occurrence: completing that occurrence again (after reopening it) makes one
more, once, which is linked from then on.

The index names a column that no update changes, so task updates stay in
place (HOT, see 0008).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INDEX = "uq_task_recurs_from"

# Plain ALTER TABLE ADD/DROP COLUMN on SQLite too (see 0007): a batch operation would copy the table.


def upgrade():
    op.add_column("task", sa.Column("recurs_from", sa.Integer))
    op.create_index(INDEX, "task", ["recurs_from"], unique=True)


def downgrade():
    op.drop_index(INDEX, table_name="task")
    op.drop_column("task", "recurs_from")
