"""todo-api: per-user tasks behind Better Auth sessions."""

import logging

from dotenv import find_dotenv, load_dotenv
from flask import Flask
from flask_cors import CORS

from . import cli, config, database, errors, ratelimit
from .json_provider import OrjsonProvider
from .listing import Cursors
from .models import session_lookup

DEVELOPMENT_SECRET = "todo-api-development-secret"


def create_app(test_config=None):
    """Build the app. `test_config` replaces settings read from the environment."""
    load_dotenv(find_dotenv(usecwd=True))
    app = Flask(__name__, instance_relative_config=True)
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
    origins = app.config["CORS_ORIGINS"]
    # Credentials are never allowed together with a wildcard origin. The browser
    # shows a script only the response headers exposed here: ETag for If-Match,
    # the rate-limit headers (Retry-After on a 429).
    CORS(
        app,
        origins=origins,
        supports_credentials="*" not in origins,
        max_age=600,
        expose_headers=["ETag", "Idempotent-Replayed", *ratelimit.HEADERS],
    )
    ratelimit.init_app(app)


def register_blueprints(app):
    from . import health, openapi, settings, tasks

    app.register_blueprint(health.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(settings.bp)
    app.register_blueprint(openapi.bp)
