"""The database engine and the per-request connection.

Every request that needs the database checks out one pooled connection the
first time it asks for it (`get_db`) and returns it when the request ends.
Connections run in autocommit mode: each operation of this service is a single
statement (the toggle is one `UPDATE ... RETURNING`), so there is no BEGIN or
COMMIT round trip to pay, and nothing half-done can be left behind.
"""
import os

from flask import current_app, g
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

POSTGRES_SCHEMES = ("postgres", "postgresql")


def normalize_url(url):
    """Accept `postgres://`, `postgresql://` and explicit driver URLs alike.

    Heroku and Render hand out `postgres://`, which SQLAlchemy does not know,
    and SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3; this service
    ships psycopg2.
    """
    parsed = make_url(url)
    if parsed.drivername in POSTGRES_SCHEMES:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def default_sqlite_url(instance_path):
    return "sqlite:///" + os.path.join(instance_path, "todo.sqlite")


def build_engine(config, instance_path):
    url = normalize_url(config.get("DATABASE_URL") or default_sqlite_url(instance_path))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.get_backend_name() == "postgresql":
        return _postgres_engine(url, config)
    raise RuntimeError(f"unsupported database: {url.get_backend_name()}")


def _postgres_engine(url, config):
    options = "-c timezone=UTC"
    if config["DATABASE_STATEMENT_TIMEOUT_MS"]:
        options += f" -c statement_timeout={config['DATABASE_STATEMENT_TIMEOUT_MS']}"
    return create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=config["DATABASE_POOL_SIZE"],
        max_overflow=config["DATABASE_MAX_OVERFLOW"],
        pool_timeout=config["DATABASE_POOL_TIMEOUT"],
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": config["DATABASE_CONNECT_TIMEOUT"],
            "options": options,
            "application_name": "todo-api",
        },
    )


def _sqlite_engine(url):
    if url.database and url.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": 15, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    return engine


def get_engine(app=None):
    return (app or current_app).extensions["todo_api.engine"]


def get_db():
    """The request's connection, checked out on first use."""
    if "db" not in g:
        g.db = get_engine().connect()
    return g.db


def close_db(_exc=None):
    connection = g.pop("db", None)
    if connection is not None:
        connection.close()


def ping():
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def init_app(app):
    app.extensions["todo_api.engine"] = build_engine(app.config, app.instance_path)
    app.teardown_appcontext(close_db)
