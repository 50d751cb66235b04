"""todo-api: per-user tasks behind Better Auth sessions."""

__version__ = "1.0.0"  # the one place it is written: pyproject.toml and the OpenAPI document read it

import logging
from pathlib import Path

from dotenv import load_dotenv
from flask import Flask

from todo_api import cli, config, errors, mode
from todo_api.auth import sessions
from todo_api.db import connections as database
from todo_api.http import cors
from todo_api.http import policy as web
from todo_api.http.json import OrjsonProvider
from todo_api.mode import Mode
from todo_api.ratelimit import bounds
from todo_api.ratelimit import limits as ratelimit
from todo_api.tasks import changes, listing

log = logging.getLogger(__name__)

DEVELOPMENT_SECRET = "todo-api-development-secret"
MISSING_SECRET = (
    "SECRET_KEY or BETTER_AUTH_SECRET must be set: page cursors are signed with it, and without it they would be "
    "signed with a public development value. For development, run `FLASK_DEBUG=1 flask --app todo_api run` "
    "(`make run` does)."
)
MISSING_DATABASE_URL = (
    "DATABASE_URL must be set: in production the service does not fall back to an empty SQLite file. "
    "For development, run `FLASK_DEBUG=1 flask --app todo_api run` (`make run` does)."
)
UNCHECKABLE_SIGNATURES = (
    "BETTER_AUTH_SECRET is unset: signed credentials (<token>.<signature>: the bearer plugin's set-auth-token, "
    "the session cookie) are refused, since their signature cannot be checked; raw session tokens are accepted"
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
    running = mode.running_mode(app)
    apply_mode(app, running)
    register_extensions(app, running)
    register_blueprints(app)
    errors.init_app(app)
    cli.init_app(app)
    if running is Mode.PRODUCTION and not app.config["BETTER_AUTH_SECRET"]:
        log.warning(UNCHECKABLE_SIGNATURES)
    return app


def apply_mode(app, running):
    """What the mode decides (see mode.py): production refuses to start without DATABASE_URL, and only
    development lets the frontend's development server (DEVELOPMENT_CORS_ORIGINS) in by default."""
    if running is Mode.PRODUCTION and not app.config["DATABASE_URL"]:
        raise RuntimeError(MISSING_DATABASE_URL)
    if app.config["CORS_ORIGINS"] is None:
        app.config["CORS_ORIGINS"] = list(config.DEVELOPMENT_CORS_ORIGINS) if running is Mode.DEVELOPMENT else []


def register_extensions(app, running):
    mode.init_app(app, running)
    database.init_app(app)
    sessions.init_app(app)
    secret = signing_secret(app, running)
    listing.init_app(app, secret)
    changes.init_app(app, secret)
    cors.init_app(app)
    ratelimit.init_app(app)
    bounds.init_app(app)


def signing_secret(app, running):
    """The key that signs page cursors. In production it must be set: the flask commands sign no cursor and must
    work on a fresh clone, and development and the tests may use a public one."""
    secret = app.config["SECRET_KEY"] or app.config["BETTER_AUTH_SECRET"]
    if secret:
        return secret
    if running is Mode.PRODUCTION:
        raise RuntimeError(MISSING_SECRET)
    log.warning("SECRET_KEY and BETTER_AUTH_SECRET are unset: page cursors are signed with a public development secret")
    return DEVELOPMENT_SECRET


def register_blueprints(app):
    from todo_api.http import health
    from todo_api.openapi import document as openapi
    from todo_api.reminders import subscriptions
    from todo_api.tasks import routes as tasks
    from todo_api.tasks import time_zone as settings

    app.register_blueprint(health.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(settings.bp)
    app.register_blueprint(subscriptions.bp)
    if app.config["DOCS_ENABLED"]:
        app.register_blueprint(openapi.bp)
