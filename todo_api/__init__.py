"""todo-api: per-user tasks behind Better Auth sessions."""

import logging
from pathlib import Path

from dotenv import load_dotenv
from flask import Flask

from . import cli, config, cors, database, errors, ratelimit, web
from .json_provider import OrjsonProvider
from .listing import Cursors
from .models import session_lookup

DEVELOPMENT_SECRET = "todo-api-development-secret"


def create_app(test_config=None):
    """Build the app. `test_config` replaces settings read from the environment."""
    # Only the working directory's .env: never one found in a parent directory.
    load_dotenv(Path.cwd() / ".env")
    app = Flask(__name__, instance_relative_config=True)
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
    database.init_app(app)
    app.extensions["todo_api.session_lookup"] = session_lookup(app.config)
    app.extensions["todo_api.cursors"] = Cursors(
        app.config["SECRET_KEY"] or app.config["BETTER_AUTH_SECRET"] or DEVELOPMENT_SECRET
    )
    cors.init_app(app)
    ratelimit.init_app(app)


def register_blueprints(app):
    from . import health, openapi, tasks

    app.register_blueprint(health.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(openapi.bp)
