"""Which mode the app runs in: decided here, once, when the app is made, and nowhere else.

- testing: the app was made with `TESTING` (the test suite's `create_app(test_config)`).
- development: Flask's development server in debug mode, `FLASK_DEBUG=1 flask --app todo_api run`
  (`make run`).
- command: any other `flask --app todo_api ...` command (`init-db`, `db upgrade`, `create-session`,
  `reminders run` ...): it answers no HTTP request.
- production: everything else, that is whatever serves requests and is not the above: gunicorn (the
  Procfile's `web:` line), any other WSGI server loading `wsgi.py` or calling `create_app()`, and `flask run`
  without debug. `FLASK_DEBUG` does not make development by itself: under gunicorn the app is still in
  production, with every safeguard below.

What depends on it (in `create_app` and `auth`):

- Without DATABASE_URL, production refuses to start; the other modes use SQLite in `instance/`.
- Without SECRET_KEY or BETTER_AUTH_SECRET, production refuses to start; the other modes sign page cursors
  with a public development secret, and say so in a warning.
- With CORS_ORIGINS unset, development lets `http://localhost:3000` (the frontend's development server) in;
  the other modes no origin at all.
- A signed credential, `<token>.<signature>`, is checked against BETTER_AUTH_SECRET in every mode. Without
  the secret, the tests and the development server look its token part up as it stands; production refuses
  it (401), so no signature is ever taken unchecked there.
"""

import enum

import click
from flask import Flask, current_app
from flask.cli import run_command


class Mode(enum.Enum):
    PRODUCTION = "production"
    DEVELOPMENT = "development"
    COMMAND = "command"
    TESTING = "testing"


def running_mode(app: Flask) -> Mode:
    """The mode of an app being made. Production unless something says otherwise: the test suite's TESTING, or
    the click command that is loading the app (`flask run` is development only in debug mode)."""
    if app.testing:
        return Mode.TESTING
    context = click.get_current_context(silent=True)
    if context is None:
        return Mode.PRODUCTION
    if context.command is run_command:
        return Mode.DEVELOPMENT if app.debug else Mode.PRODUCTION
    return Mode.COMMAND


def checks_every_signature(mode: Mode) -> bool:
    """Whether a signed credential must have its signature checked (and so is refused when there is no
    BETTER_AUTH_SECRET to check it with). Only the test suite and the development server may skip it."""
    return mode not in (Mode.TESTING, Mode.DEVELOPMENT)


EXTENSION = "todo_api.mode"


def init_app(app: Flask, mode: Mode) -> None:
    app.extensions[EXTENSION] = mode


def get_mode(app: Flask | None = None) -> Mode:
    return (app or current_app).extensions[EXTENSION]
