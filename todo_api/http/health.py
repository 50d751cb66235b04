"""Liveness and readiness; neither needs a session."""

import logging

from flask import Blueprint, current_app

from todo_api.db import schema
from todo_api.db.connections import run_retrying_once
from todo_api.errors import database_unavailable, error_response
from todo_api.openapi.operations import operation, response
from todo_api.tasks.schemas import MessageSchema, StatusSchema

log = logging.getLogger(__name__)

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
    description="200 only when the database answers and holds the schema this release needs: its migrations at "
    "head, every table and column the service reads, Better Auth's session table. Otherwise 503, and `detail` says "
    "what is missing and what to run.",
    response=response("Ready.", StatusSchema),
    errors=[503],
    public=True,
)
def ready():
    """Readiness: one statement, on a fresh connection if the kept one is dead (an outage that is over is not
    reported); the database answers it only when every table and column is there (see `schema`)."""
    try:
        problem = run_retrying_once(readiness_problem, writes=False)
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        return database_unavailable(error)
    if problem is not None:
        log.error("not ready: %s", problem)
        return error_response(503, problem)
    return {"status": "ready"}


def readiness_problem(db):
    return schema.readiness_problem(db, current_app.config)
