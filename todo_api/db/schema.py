"""Whether the database holds what this service needs, and if not, what to run: for `/health/ready` and the
commands.

What the web processes need: the migrations at head (or at a revision this release does not know, which a later
release's `db upgrade` wrote), every table and column of `tables.metadata`, and Better Auth's session table with
the three columns the session lookup reads. The readiness probe asks it all in one statement: the revision in
`alembic_version`, with one `EXISTS (SELECT <every column> FROM <table> WHERE false)` per table, which the
database answers from its catalog, reading no row, and cannot answer at all when a table or column is missing.
Only then is the database inspected, to name what it lacks.
"""

import functools

from alembic.script import ScriptDirectory
from sqlalchemy import column, false, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from todo_api.db import tables
from todo_api.db.migrate import MIGRATIONS

UPGRADE = "run `flask --app todo_api db upgrade`"
BETTER_AUTH_MIGRATE = "run Better Auth's migrations (`npx @better-auth/cli migrate`)"

alembic_version = table("alembic_version", column("version_num"))


@functools.cache
def migration_revisions() -> tuple[str, frozenset[str]]:
    """This release's newest migration, and every migration it has."""
    script = ScriptDirectory(MIGRATIONS)
    return script.get_current_head(), frozenset(revision.revision for revision in script.walk_revisions())


def migrated_tables():
    """The tables the migrations make, with every column the service names."""
    return [table(t.name, *(column(c.name) for c in t.c)) for t in tables.metadata.sorted_tables]


def session_names(config):
    """Better Auth's session table, and the columns of it the session lookup reads, as configured."""
    return tuple(
        config[name]
        for name in ("SESSION_TABLE", "SESSION_TOKEN_COLUMN", "SESSION_USER_ID_COLUMN", "SESSION_EXPIRES_AT_COLUMN")
    )


def session_columns(names):
    """Better Auth's session table, with the columns the session lookup reads (`session_names`)."""
    session_table, *columns = names
    return table(session_table, *(column(name) for name in columns))


def readiness_probe(config):
    """The one statement of the readiness probe: the revisions in `alembic_version` (one row), answered only when
    every table and column the service reads is there. Built once per set of session names."""
    return probe_for_sessions(session_names(config))


@functools.lru_cache(maxsize=4)
def probe_for_sessions(names):
    needed = [*migrated_tables(), session_columns(names)]
    return select(alembic_version.c.version_num, *(select(*t.c).where(false()).exists() for t in needed))


def readiness_problem(connection: Connection, config):
    """What keeps the web processes from working on this database, as sentences saying what to run; None when
    nothing does. Raises what the database raised when it is not the schema's fault (an outage, a timeout)."""
    try:
        revisions = connection.execute(readiness_probe(config)).scalars().all()
    except DBAPIError as error:
        if error.connection_invalidated:
            raise
        connection.rollback()
        problem = missing_problem(connection, config)
        if problem is None:
            raise
        return problem
    return revision_problem(revisions)


def revision_problem(revisions):
    """What is wrong with the revisions the probe found, as a sentence; None when the schema is current."""
    head, known = migration_revisions()
    if head in revisions or (revisions and not known.intersection(revisions)):
        return None
    if not revisions:
        return f"No migration has run on this database: {UPGRADE}."
    return f"The database schema is at migration {', '.join(sorted(revisions))}, this release needs {head}: {UPGRADE}."


def missing_parts(connection: Connection, wanted) -> list[str]:
    """`table x` or `column x.y` for each table or column of `wanted` that the database lacks."""
    inspector = inspect(connection)
    present = set(inspector.get_table_names())
    missing = []
    for wanted_table in wanted:
        if wanted_table.name not in present:
            missing.append(f"table {wanted_table.name}")
            continue
        columns = {found["name"] for found in inspector.get_columns(wanted_table.name)}
        missing.extend(f"column {wanted_table.name}.{c.name}" for c in wanted_table.c if c.name not in columns)
    return missing


def missing_problem(connection: Connection, config):
    """What the database lacks of the tables and columns the service reads, as sentences; None if nothing."""
    sentences = []
    missing = missing_parts(connection, [alembic_version, *migrated_tables()])
    if missing:
        sentences.append(f"The database lacks {', '.join(missing)}: {UPGRADE}.")
    missing = missing_parts(connection, [session_columns(session_names(config))])
    if missing:
        sentences.append(
            f"The database lacks Better Auth's {', '.join(missing)}: {BETTER_AUTH_MIGRATE}, or set SESSION_TABLE and "
            "the SESSION_*_COLUMN variables to the names Better Auth was configured with."
        )
    return " ".join(sentences) or None


def auth_tables_problem(connection: Connection, config):
    """What the database lacks of Better Auth's user and session tables (for `create-session`), as a sentence."""
    missing = missing_parts(connection, tables.auth_tables(config).sorted_tables)
    if not missing:
        return None
    return (
        f"Better Auth's tables are not in this database (it lacks {', '.join(missing)}): {BETTER_AUTH_MIGRATE}, or "
        "for development `flask --app todo_api init-db --auth-tables`."
    )
