"""The tasks API: each view parses with a schema, does one thing, serializes."""
from flask import Blueprint, g, request

from . import models
from .auth import authenticate
from .database import get_db
from .schemas import completion_schema, task_create_schema, task_schema, task_update_schema, tasks_schema

bp = Blueprint("tasks", __name__, url_prefix="/api")


@bp.before_request
def require_session():
    if request.method != "OPTIONS":  # CORS preflights carry no credentials
        authenticate()


def json_body(schema):
    """The request body, validated; 400 if malformed, 415 if not JSON."""
    return schema.load(request.get_json())


def has_body():
    return bool(request.content_length) or request.headers.get("Transfer-Encoding") == "chunked"


@bp.get("/tasks")
def list_tasks():
    return {"data": tasks_schema.dump(models.list_tasks(get_db(), g.user_id))}


@bp.post("/tasks")
def create_task():
    fields = json_body(task_create_schema)
    return {"data": task_schema.dump(models.create_task(get_db(), g.user_id, fields))}


@bp.get("/tasks/<int(signed=True):task_id>")
def get_task(task_id):
    return {"data": task_schema.dump(models.get_task(get_db(), g.user_id, task_id))}


@bp.put("/tasks/<int(signed=True):task_id>")
def update_task(task_id):
    changes = json_body(task_update_schema)
    if not changes:
        row = models.get_task(get_db(), g.user_id, task_id)
    else:
        row = models.update_task(get_db(), g.user_id, task_id, changes)
    return {"data": task_schema.dump(row)}


@bp.delete("/tasks/<int(signed=True):task_id>")
def delete_task(task_id):
    models.delete_task(get_db(), g.user_id, task_id)
    return {"data": {"ok": True}}


@bp.patch("/tasks/<int(signed=True):task_id>/complete")
def complete_task(task_id):
    """No body toggles; `{"completed": bool}` sets, so a retry cannot flip it back."""
    if has_body():
        completed = json_body(completion_schema)["completed"]
        row = models.set_task_completed(get_db(), g.user_id, task_id, completed)
    else:
        row = models.toggle_task(get_db(), g.user_id, task_id)
    return {"data": task_schema.dump(row)}
