"""Liveness and readiness; neither needs a session."""

from flask import Blueprint

from . import database
from .errors import database_unavailable

bp = Blueprint("health", __name__)


@bp.get("/")
def index():
    return {"message": "todo-api is running"}


@bp.get("/health")
def health():
    """Liveness: answers without touching the database."""
    return {"status": "healthy"}


@bp.get("/health/ready")
def ready():
    """Readiness: 200 only when the database answers."""
    try:
        database.ping()
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        return database_unavailable(error)
    return {"status": "ready"}
