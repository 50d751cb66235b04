"""Liveness and readiness; neither needs a session."""

from flask import Blueprint

from todo_api.db import connections as database
from todo_api.errors import database_unavailable
from todo_api.openapi.operations import operation, response
from todo_api.tasks.schemas import MessageSchema, StatusSchema

bp = Blueprint("health", __name__)


@bp.get("/")
@operation("Service banner", response=response("The service is running.", MessageSchema), public=True)
def index():
    return {"message": "todo-api is running"}


@bp.get("/health")
@operation(
    "Liveness",
    description="Answers without touching the database.",
    response=response("Alive.", StatusSchema),
    public=True,
)
def health():
    """Liveness: answers without touching the database."""
    return {"status": "healthy"}


@bp.get("/health/ready")
@operation(
    "Readiness",
    description="200 only when the database answers.",
    response=response("Ready.", StatusSchema),
    errors=[503],
    public=True,
)
def ready():
    """Readiness: 200 only when the database answers."""
    try:
        database.ping()
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        return database_unavailable(error)
    return {"status": "ready"}
