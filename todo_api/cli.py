"""Command-line tools: `flask --app todo_api init-db`, `db ...` and `create-session`.

Schema changes (`init-db`, `db upgrade|downgrade|current`) run on
DATABASE_MIGRATION_URL when it is set: the direct connection, when
DATABASE_URL goes through a transaction pooler.
"""

import secrets
import string
from datetime import UTC, datetime, timedelta

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import insert, select

from . import models
from .database import current_revision, downgrade, get_engine, migration_engine, upgrade

TOKEN_ALPHABET = string.ascii_letters + string.digits


def random_id(length=32):
    """An id shaped like Better Auth's: 32 alphanumeric characters."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def create_user_session(connection, config, email, lifetime=timedelta(days=7)):
    """Find or create the user with this email and give them a new session; return its token."""
    tables = models.auth_tables(config)
    users, sessions = tables.tables["user"], tables.tables[config["SESSION_TABLE"]]
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
        models.create_schema(engine, current_app.config, with_auth_tables=auth_tables)
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
        token = create_user_session(connection, current_app.config, email, timedelta(days=days))
    click.echo(token)


def init_app(app):
    app.cli.add_command(init_db_command)
    app.cli.add_command(db_command)
    app.cli.add_command(create_session_command)
