"""Command-line tools: `flask --app todo_api init-db`, `db ...`, `create-session`, `erase-orphans`,
`erase-user`, `reminders` and `vapid-keys`.

Schema changes (`init-db`, `db upgrade|downgrade|current`) run on
DATABASE_MIGRATION_URL when it is set: the direct connection, when
DATABASE_URL goes through a transaction pooler.
"""

import logging
import secrets
import signal
import string
import threading
from datetime import UTC, datetime, timedelta

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import delete, exists, func, insert, inspect, select, union

from todo_api.db import schema, tables
from todo_api.db.connections import get_engine
from todo_api.db.migrate import create_schema, current_revision, downgrade, migration_engine, upgrade
from todo_api.tasks.changes import purge_changes

TOKEN_ALPHABET = string.ascii_letters + string.digits

log = logging.getLogger("todo_api.reminders.worker")


def random_id(length=32):
    """An id shaped like Better Auth's: 32 alphanumeric characters."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def create_user_session(connection, config, email, lifetime=timedelta(days=7)):
    """Find or create the user with this email and give them a new session; return its token."""
    auth = tables.auth_tables(config)
    users, sessions = auth.tables["user"], auth.tables[config["SESSION_TABLE"]]
    now = datetime.now(UTC)
    user_id = connection.execute(select(users.c.id).where(users.c.email == email)).scalar()
    if user_id is None:
        user_id = random_id()
        connection.execute(
            insert(users).values(
                id=user_id, name=email.split("@")[0], email=email, emailVerified=False, createdAt=now, updatedAt=now
            )
        )
    token = random_id()
    connection.execute(
        insert(sessions).values(
            {
                "id": random_id(),
                config["SESSION_TOKEN_COLUMN"]: token,
                config["SESSION_USER_ID_COLUMN"]: user_id,
                config["SESSION_EXPIRES_AT_COLUMN"]: now + lifetime,
                "createdAt": now,
                "updatedAt": now,
            }
        )
    )
    return token


@click.command("init-db")
@with_appcontext
@click.option(
    "--auth-tables/--no-auth-tables",
    default=None,
    help="Also create Better Auth-compatible user and session tables when missing "
    "(for development and tests; default: on for SQLite, off otherwise).",
)
def init_db_command(auth_tables):
    """Migrate the schema to the newest revision (`db upgrade`); existing rows are kept."""
    with migration_engine() as engine:
        if auth_tables is None:
            auth_tables = engine.dialect.name == "sqlite"
        create_schema(engine, current_app.config, with_auth_tables=auth_tables)
        click.echo(f"Initialized the database ({engine.dialect.name}).")


db_command = AppGroup("db", help="Schema migrations (Alembic), on DATABASE_MIGRATION_URL when it is set.")


@db_command.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade_command(revision):
    """Migrate the schema up to REVISION (default: the newest)."""
    with migration_engine() as engine:
        upgrade(engine, revision, app_config=current_app.config)
        click.echo(f"Database at revision {current_revision(engine)}.")


@db_command.command("downgrade")
@click.argument("revision")
def db_downgrade_command(revision):
    """Migrate the schema down to REVISION."""
    with migration_engine() as engine:
        downgrade(engine, revision, app_config=current_app.config)
        click.echo(f"Database at revision {current_revision(engine)}.")


@db_command.command("current")
def db_current_command():
    """Print the schema's current revision."""
    with migration_engine() as engine:
        click.echo(current_revision(engine) or "none")


@click.command("create-session")
@with_appcontext
@click.argument("email")
@click.option("--days", default=7, show_default=True, type=click.IntRange(min=1), help="Session lifetime.")
def create_session_command(email, days):
    """Create a user with this EMAIL (if new) and a session for them; print its token."""
    with get_engine().begin() as connection:
        problem = schema.auth_tables_problem(connection, current_app.config)
        if problem is not None:
            raise click.ClickException(problem)
        token = create_user_session(connection, current_app.config, email, timedelta(days=days))
    click.echo(token)


# Every table of this service keyed by a Better Auth user id. Better Auth owns the `user` table, so none of
# them has a foreign key to it: a user deleted there leaves these rows behind until they are erased.
USER_TABLES = (tables.task, tables.idempotency_key, tables.user_settings, tables.push_subscription)


def missing_user(table):
    return ~exists().where(tables.user.c.id == table.c.user_id)


def erase_rows(connection, condition_for, dry_run):
    """Delete (or, in a dry run, count) the rows of every user table that match `condition_for(table)`."""
    counts = {}
    for table in USER_TABLES:
        condition = condition_for(table)
        if dry_run:
            counts[table.name] = connection.execute(select(func.count()).select_from(table).where(condition)).scalar()
        else:
            counts[table.name] = connection.execute(delete(table).where(condition)).rowcount
    return counts


def summary(dry_run, counts):
    erased = ", ".join(f"{table} {count}" for table, count in counts.items())
    return f"{'Would erase' if dry_run else 'Erased'}: {erased}."


def check_user_table(connection):
    """Refuse to treat every user as deleted when Better Auth's user table is missing or empty here."""
    if not inspect(connection).has_table(tables.user.name):
        raise click.ClickException("Better Auth's user table is not in this database: nothing was erased.")
    if connection.execute(select(tables.user.c.id).limit(1)).first() is None:
        raise click.ClickException(
            "Better Auth's user table is empty: erasing would delete every user's rows, so nothing was erased."
        )


dry_run_option = click.option("--dry-run", is_flag=True, help="Count the rows that would be erased; erase nothing.")


@click.command("erase-orphans")
@with_appcontext
@dry_run_option
def erase_orphans_command(dry_run):
    """Erase the tasks and idempotency keys of users that no longer exist in Better Auth's user table."""
    with get_engine().begin() as connection:
        check_user_table(connection)
        owners = union(*(select(table.c.user_id).where(missing_user(table)) for table in USER_TABLES)).subquery()
        users = connection.execute(select(func.count()).select_from(owners)).scalar()
        counts = erase_rows(connection, missing_user, dry_run)
    click.echo(f"Users missing from Better Auth's user table: {users}. {summary(dry_run, counts)}")


@click.command("erase-user")
@with_appcontext
@click.argument("user_id")
@dry_run_option
def erase_user_command(user_id, dry_run):
    """Erase the tasks and idempotency keys of the user with this USER_ID (Better Auth's `user.id`)."""
    with get_engine().begin() as connection:
        counts = erase_rows(connection, lambda table: table.c.user_id == user_id, dry_run)
    click.echo(f"User {user_id}. {summary(dry_run, counts)}")


@click.command("purge-changes")
@with_appcontext
def purge_changes_command():
    """Forget the change log's rows older than SYNC_RETENTION_DAYS (sync tokens that old are refused with 410)."""
    with get_engine().begin() as connection:
        purged = purge_changes(connection, current_app.config["SYNC_RETENTION_DAYS"])
    click.echo(f"Purged {purged} change log rows older than {current_app.config['SYNC_RETENTION_DAYS']} days.")


reminders_command = AppGroup("reminders", help="Push due reminders to the users' browsers (Web Push).")


def reminder_worker(app):
    """The worker, or a ClickException naming the VAPID setting that is missing or wrong.

    Imported here, not at start-up: the web app never sends a push.
    """
    from todo_api.reminders.push import VapidSettingError
    from todo_api.reminders.worker import Worker

    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its debug lines name the URLs it calls
    try:
        return Worker.from_app(app)
    except VapidSettingError as error:
        raise click.ClickException(str(error)) from None


@reminders_command.command("run")
def reminders_run_command():
    """Push due reminders every REMINDER_POLL_SECONDS until SIGTERM or SIGINT (then let the pushes in flight end,
    within a few seconds, give back the batch's others, and exit 0)."""
    from todo_api.reminders.worker import run_forever

    app = current_app._get_current_object()
    worker = reminder_worker(app)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("reminder worker started: a pass every %d s", app.config["REMINDER_POLL_SECONDS"])
    try:
        run_forever(worker, app.config["REMINDER_POLL_SECONDS"], stop)
    finally:
        worker.close()
    log.info("reminder worker stopped")


@reminders_command.command("send-due")
def reminders_send_due_command():
    """Push every reminder that is due now, once (for cron), and print what became of them."""
    from todo_api.reminders.worker import describe

    worker = reminder_worker(current_app._get_current_object())
    try:
        counts = worker.run_pass()
    finally:
        worker.close()
    click.echo(f"Reminders: {describe(counts)}.")


@click.command("vapid-keys")
def vapid_keys_command():
    """Print a new VAPID key pair, as VAPID_PUBLIC_KEY=... and VAPID_PRIVATE_KEY=... lines.

    The public key is also the frontend's NEXT_PUBLIC_VAPID_PUBLIC_KEY.
    """
    from todo_api.reminders.push import generate_vapid_keys

    public_key, private_key = generate_vapid_keys()
    click.echo(f"VAPID_PUBLIC_KEY={public_key}")
    click.echo(f"VAPID_PRIVATE_KEY={private_key}")


def init_app(app):
    app.cli.add_command(reminders_command)
    app.cli.add_command(vapid_keys_command)
    app.cli.add_command(init_db_command)
    app.cli.add_command(db_command)
    app.cli.add_command(create_session_command)
    app.cli.add_command(erase_orphans_command)
    app.cli.add_command(erase_user_command)
    app.cli.add_command(purge_changes_command)
