"""Every error leaves this service as JSON with a human-readable `detail`."""

import logging

from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def error_response(status, detail, headers=None, **extra):
    return {"detail": detail, **extra}, status, headers or {}


def handle_http_error(error):
    """An HTTP error's status and description; one of ours may add fields of its own (`fields`)."""
    headers = dict(error.get_headers())
    headers.pop("Content-Type", None)
    return error_response(error.code, error.description, headers, **getattr(error, "fields", {}))


def handle_validation_error(error):
    return error_response(422, "Validation failed", errors=error.normalized_messages())


def database_unavailable(error):
    # Logged without statement or parameters: they may hold a session token.
    log.error("database unavailable: %s", type(getattr(error, "orig", None) or error).__name__)
    return error_response(503, "Service temporarily unavailable", {"Retry-After": RETRY_AFTER_SECONDS})


def handle_database_error(error):
    if isinstance(error, OperationalError) or error.connection_invalidated:
        return database_unavailable(error)
    return handle_unexpected_error(error)


def handle_unexpected_error(error):
    log.error("unhandled error: %s", type(error).__name__, exc_info=not isinstance(error, DBAPIError))
    return error_response(500, InternalServerError.description)


# Each kind of error and its answer; the first that an error is an instance of answers it.
HANDLERS = [
    (HTTPException, handle_http_error),
    (ValidationError, handle_validation_error),
    (DBAPIError, handle_database_error),
    (DisconnectionError, database_unavailable),
    (PoolTimeoutError, database_unavailable),
    (Exception, handle_unexpected_error),
]


def handle_error(error):
    """The answer to `error`, as the app's own handlers give it (for a handler of a blueprint that decides
    which error to answer: see `auth.require_session`)."""
    return next(handler for kind, handler in HANDLERS if isinstance(error, kind))(error)


def init_app(app):
    for kind, handler in HANDLERS:
        app.register_error_handler(kind, handler)
