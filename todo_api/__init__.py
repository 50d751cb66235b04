"""todo-api: per-user tasks behind Better Auth sessions."""

__version__ = "1.0.0"  # the one place it is written: setup.cfg and the OpenAPI document read it

import logging
from pathlib import Path

import click
from dotenv import load_dotenv
from flask import Flask

from . import bounds, cli, config, cors, database, errors, ratelimit, state, web
from .auth import KnownSessions, session_guard, session_lookup
from .json_provider import OrjsonProvider
from .listing import Cursors

log = logging.getLogger(__name__)

DEVELOPMENT_SECRET = "todo-api-development-secret"
MISSING_SECRET = (
    "SECRET_KEY or BETTER_AUTH_SECRET must be set: page cursors are signed with it, and without it they would be "
    "signed with a public development value. For development, run with FLASK_DEBUG=1 (`make run` does)."
)


class TodoApi(Flask):
    def ensure_sync(self, func):
        """Every view and hook of this app is a plain function: called as it is. (Flask's own version asks
        `inspect` whether each one is a coroutine function, for every hook of every request.)"""
        return func


def create_app(test_config=None):
    """Build the app. `test_config` replaces settings read from the environment."""
    # Only the working directory's .env: never one found in a parent directory.
    load_dotenv(Path.cwd() / ".env")
    app = TodoApi(__name__, instance_relative_config=True)
    web.init_app(app)
    app.json = OrjsonProvider(app)
    app.config.from_mapping(config.from_environment())
    if test_config is not None:
        app.config.from_mapping(test_config)

    logging.basicConfig(level=app.config["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    register_extensions(app)
    register_blueprints(app)
    errors.init_app(app)
    cli.init_app(app)
    return app


def register_extensions(app):
    engine = database.build_engine(app.config, app.instance_path)
    app_state = state.AppState(
        engine=engine,
        connections=database.ThreadConnections(engine),
        session_lookup=session_lookup(app.config),
        cursors=Cursors(signing_secret(app)),
        session_guard=session_guard(app.config),
        known_sessions=KnownSessions(),
    )
    state.init_app(app, app_state)
    database.init_app(app)
    cors.init_app(app)
    ratelimit.init_app(app)
    bounds.init_app(app)


def signing_secret(app):
    """The key that signs page cursors. Outside development, tests and the flask commands, it must be set."""
    secret = app.config["SECRET_KEY"] or app.config["BETTER_AUTH_SECRET"]
    if secret:
        return secret
    if not (app.debug or app.testing or loaded_for_a_command()):
        raise RuntimeError(MISSING_SECRET)
    log.warning("SECRET_KEY and BETTER_AUTH_SECRET are unset: page cursors are signed with a public development secret")
    return DEVELOPMENT_SECRET


def loaded_for_a_command():
    """True when the flask command loads the app for a command such as init-db, db upgrade or create-session.

    Those sign no cursor and must work on a fresh clone; `flask run` serves requests, so it does not count.
    """
    context = click.get_current_context(silent=True)
    return context is not None and context.command.name != "run"


def register_blueprints(app):
    from . import health, openapi, settings, subscriptions, tasks

    app.register_blueprint(health.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(settings.bp)
    app.register_blueprint(subscriptions.bp)
    if app.config["DOCS_ENABLED"]:
        app.register_blueprint(openapi.bp)
