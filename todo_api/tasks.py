"""The tasks API: each view parses with a schema, does one thing, serializes."""
from flask import Blueprint, current_app, g, request

from . import listing, models
from .auth import authenticate
from .database import get_db
from .ratelimit import limit_user
from .schemas import (
    completion_schema,
    list_query_schema,
    search_query_schema,
    task_create_schema,
    task_output,
    task_update_schema,
)

bp = Blueprint("tasks", __name__, url_prefix="/api")


@bp.before_request
def require_session():
    if request.method != "OPTIONS":  # CORS preflights carry no credentials
        authenticate()
        limit_user()  # after authentication: the per-user limit is keyed by the user


def json_body(schema):
    """The request body, validated; 400 if malformed, 415 if not JSON."""
    return schema.load(request.get_json())


def has_body():
    return bool(request.content_length) or request.headers.get("Transfer-Encoding") == "chunked"


def page(query):
    rows, next_cursor = listing.list_tasks(get_db(), g.user_id, query, current_app.extensions["todo_api.cursors"])
    body = {"data": [task_output(row) for row in rows]}
    if next_cursor:
        body["next_cursor"] = next_cursor
    return body


def changed(row, next_task):
    """A changed task; a recurring task that was completed also shows its next occurrence."""
    body = {"data": task_output(row)}
    if next_task is not None:
        body["next_task"] = task_output(next_task)
    return body


@bp.get("/tasks")
@bp.get("/tasks/filter-sort")
def list_tasks():
    return page(list_query_schema.load(request.args))


@bp.get("/tasks/search")
def search_tasks():
    return page(search_query_schema.load(request.args))


@bp.post("/tasks")
def create_task():
    fields = json_body(task_create_schema)
    return {"data": task_output(models.create_task(get_db(), g.user_id, fields))}


@bp.get("/tasks/<int(signed=True):task_id>")
def get_task(task_id):
    return {"data": task_output(models.get_task(get_db(), g.user_id, task_id))}


@bp.put("/tasks/<int(signed=True):task_id>")
def update_task(task_id):
    changes = json_body(task_update_schema)
    return changed(*models.update_task(get_db(), g.user_id, task_id, changes))


@bp.delete("/tasks/<int(signed=True):task_id>")
def delete_task(task_id):
    models.delete_task(get_db(), g.user_id, task_id)
    return {"data": {"ok": True}}


@bp.patch("/tasks/<int(signed=True):task_id>/complete")
def complete_task(task_id):
    """No body toggles; `{"completed": bool}` sets, so a retry cannot flip it back."""
    if has_body():
        completed = json_body(completion_schema)["completed"]
        return changed(*models.set_task_completed(get_db(), g.user_id, task_id, completed))
    return changed(*models.toggle_task(get_db(), g.user_id, task_id))


@bp.patch("/tasks/<int(signed=True):task_id>/mark-reminder-sent")
def mark_reminder_sent(task_id):
    return {"data": task_output(models.mark_reminder_sent(get_db(), g.user_id, task_id))}
