"""Due dates and reminders on the user's wall clock.

`due_date` and `remind_at` stay the UTC instants that filters, sorts and the
list indexes use. A value given without an offset is also kept as given:
`due_local` and `remind_local` hold the wall-clock time, `due_all_day` says the
due date is a calendar day (then `due_local` is its midnight and `due_date`
the instant the day begins in the user's zone). Existing rows were given with
an offset: they keep their values, with `due_all_day` false and no local
times.

On Postgres the SQL function `todo_local_to_utc(zone, local)` turns a
wall-clock time into its instant, and `todo_day_start(zone, instant)` gives
the instant the user's day began (see `todo_api/timezones.py`); SQLite
registers the same functions on each connection.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

POSTGRES_FUNCTIONS = (
    """
    CREATE FUNCTION todo_local_to_utc(zone text, local timestamp) RETURNS timestamp
    LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
        SELECT LEAST(
            CASE WHEN timezone(zone, timezone('UTC', first_candidate)) = local THEN first_candidate
                 ELSE postgres_reading END,
            '9999-12-31 23:59:59.999999'::timestamp)
        FROM (SELECT timezone('UTC', timezone(zone, local)) AS postgres_reading,
                     timezone('UTC', timezone(zone, local - interval '1 day')) + interval '1 day'
                         AS first_candidate) AS candidates
    $$
    """,
    """
    CREATE FUNCTION todo_day_start(zone text, instant timestamp) RETURNS timestamp
    LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
        SELECT todo_local_to_utc(zone, date_trunc('day', timezone(zone, timezone('UTC', instant))))
    $$
    """,
)
DROP_POSTGRES_FUNCTIONS = (
    "DROP FUNCTION IF EXISTS todo_day_start(text, timestamp)",
    "DROP FUNCTION IF EXISTS todo_local_to_utc(text, timestamp)",
)


# Plain ALTER TABLE ADD/DROP COLUMN, on SQLite too (3.35 or later): a batch operation
# would copy the table, and SQLite's copy loses the expression index on priority.


def upgrade():
    op.add_column("task", sa.Column("due_all_day", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("task", sa.Column("due_local", sa.DateTime))
    op.add_column("task", sa.Column("remind_local", sa.DateTime))
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRES_FUNCTIONS:
            op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for statement in DROP_POSTGRES_FUNCTIONS:
            op.execute(statement)
    for column in ["remind_local", "due_local", "due_all_day"]:
        op.drop_column("task", column)
