"""The drills' fixtures: a Postgres cluster of each module's own (support/private_postgres.py), which the drills
stop, crash and restart, with the schema and the auth tables; SQL on it; real sessions on it."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from support import REPO, base_config
from support.private_postgres import running_cluster
from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.db.connections import get_engine
from todo_api.db.engine import normalize_url

DRILLS = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    """Every test in this folder is a drill: marked `drills`, so that `-m drills` and `-m "not drills"` select them."""
    for item in items:
        if DRILLS in item.path.parents:
            item.add_marker(pytest.mark.drills)


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("failure drills need") as cluster:
        subprocess.run(
            [sys.executable, "-m", "flask", "--app", "todo_api", "init-db", "--auth-tables"],
            cwd=REPO,
            env={**os.environ, "DATABASE_URL": cluster.url},
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield cluster


@pytest.fixture(scope="module")
def issued_tokens():
    """Every session token the drills hand out, to look for in the logs."""
    return []


@pytest.fixture
def sql(cluster):
    engine = create_engine(normalize_url(cluster.url), isolation_level="AUTOCOMMIT")

    def run(statement, **params):
        with engine.connect() as connection:
            result = connection.execute(text(statement), params)
            return result.all() if result.returns_rows else None

    yield run
    engine.dispose()


@pytest.fixture
def session_on(cluster, issued_tokens):
    """A real user and session in the private cluster; returns the token."""

    def create(email=None):
        app = create_app(base_config(cluster.url))
        with get_engine(app).begin() as connection:
            token = create_user_session(connection, app.config, email or f"{uuid.uuid4().hex}@example.com")
        get_engine(app).dispose()
        issued_tokens.append(token)
        return token

    return create
