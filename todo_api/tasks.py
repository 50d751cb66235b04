"""The tasks API: each view parses with a schema, does one thing, serializes.

Every response that carries one task carries its ETag; writes to one task
honour If-Match (see `conditional`), and creates honour Idempotency-Key (see
`idempotency`).
"""

import functools

import orjson
from flask import Blueprint, Response, current_app, g, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from . import bounds, idempotency, listing, task_store
from .apidoc import operation, request_body, response
from .auth import authenticate, confirm_session
from .conditional import etag, etag_of, if_match_versions, not_modified
from .database import get_db, on_live_connection
from .json_provider import OPTIONS as JSON_OPTIONS
from .ratelimit import limit_user
from .schemas import (
    ChangedTaskEnvelopeSchema,
    DeletedEnvelopeSchema,
    ListQuery,
    TaskEnvelopeSchema,
    TaskListEnvelopeSchema,
    completion_schema,
    filter_sort_query_schema,
    list_query_schema,
    search_query_schema,
    task_create_schema,
    task_output,
    task_update_schema,
)
from .state import app_state, get_cursors

bp = Blueprint("tasks", __name__, url_prefix="/api")

LIST_DESCRIPTION = (
    "The caller's tasks, newest first unless sorted otherwise. Filters combine; ties break on `id`. Without "
    "`limit`, up to 1,000 tasks come back. A page also ends before the task that would take the response over "
    "`RESPONSE_MAX_BYTES` (1 MiB by default; a page always holds at least one task). When more follow, "
    "`next_cursor` is set."
)
TASK_LIST = response("One page of tasks.", TaskListEnvelopeSchema)
TASK = response("The task.", TaskEnvelopeSchema)
CHANGED_TASK = response(
    "The task; completing a recurring task adds `next_task`, its next occurrence.", ChangedTaskEnvelopeSchema
)


@bp.before_request
def require_session():
    current = request._get_current_object()  # one context lookup, not one per attribute
    if current.method != "OPTIONS":  # CORS preflights carry no credentials
        view = current_app.view_functions.get(current.endpoint)
        authenticate(deferred=getattr(view, "session_in_statement", False))
        limit_user()  # after authentication: the per-user limit is keyed by the user
        bounds.take_user_place()


def session_in_statement(view):
    """A route whose statements check the caller's session themselves (`caller`, see `auth`): one round
    trip per request.

    Whatever else it answers (404, 412, 422, 400, 415) is answered only once the
    session is known to be live: a dead one is 401, whatever the request holds.
    """

    @functools.wraps(view)
    def checked(**kwargs):
        try:
            return view(**kwargs)
        except (HTTPException, ValidationError):
            confirm_session()
            raise

    checked.session_in_statement = True
    return checked


def caller():
    """The caller's user id, and their session for the statements to check (see `task_store.SessionCheck`)."""
    request_globals = g._get_current_object()  # one context lookup for both
    return request_globals.user_id, task_store.SessionCheck(app_state().session_guard, request_globals.session_digest)


def json_body(schema):
    """The request body, validated; 400 if malformed, 415 if not JSON."""
    return schema.load(request.get_json())


def has_body():
    return bool(request.content_length) or request.environ.get("HTTP_TRANSFER_ENCODING") == "chunked"


def list_query(schema) -> ListQuery:
    """The request's list query, loaded by `schema`; without a query string, what `schema` loads from none."""
    args = request.args
    return schema.load(args) if args else loaded_from_nothing(schema)


@functools.cache
def loaded_from_nothing(schema) -> ListQuery:
    return schema.load({})  # the same every time (a frozen ListQuery): loaded once per schema


def list_page(query: ListQuery, user_id: str, session: task_store.SessionCheck | None = None):
    """One page of the user's tasks, at most RESPONSE_MAX_BYTES long (see `listing.page_body`).

    Under `session`, an empty page is answered only once the session is known to be live."""
    app = current_app._get_current_object()
    config, cursors = app.config, get_cursors(app)
    timeout = config["SEARCH_STATEMENT_TIMEOUT_MS"]
    with bounds.page_work(user_id) as work:
        rows = on_live_connection(lambda db: listing.find_tasks(db, user_id, query, cursors, timeout, session))
        if not rows and session is not None:
            confirm_session()
        work.fetched(rows)
        body = listing.page_body(rows, query, cursors, task_output, config["RESPONSE_MAX_BYTES"])
    return Response(body, mimetype="application/json")


def json_response(body, headers=None):
    return Response(orjson.dumps(body, option=JSON_OPTIONS), mimetype="application/json", headers=headers)


def one_task(row):
    return json_response({"data": task_output(row)}, {"ETag": etag(row)})


def task_and_next(row, next_task):
    """A changed task; a recurring task that was completed also shows its next occurrence."""
    body = {"data": task_output(row)}
    if next_task is not None:
        body["next_task"] = task_output(next_task)
    return json_response(body, {"ETag": etag(row)})


def created_body(row):
    """The body of a create, as stored for Idempotency-Key replays: the same bytes as `one_task`'s."""
    return current_app.json.dumps({"data": task_output(row)})


def created_under_key(created: idempotency.Created):
    """A create under Idempotency-Key: its stored body, and the task's ETag as it was created."""
    headers = {"ETag": etag_of(created.task_id, created.version)}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(created.body, mimetype="application/json", headers=headers)


@bp.get("/tasks")
@operation("List tasks", description=LIST_DESCRIPTION, query=list_query_schema, response=TASK_LIST)
@session_in_statement
def list_tasks():
    user_id, session = caller()
    return list_page(list_query(list_query_schema), user_id, session)


@bp.get("/tasks/filter-sort")
@operation(
    "List tasks, oldest first",
    description="The list, as the frontend's filter and sort controls call it: the same parameters, but "
    "`sort_order` defaults to `asc`.",
    query=filter_sort_query_schema,
    response=TASK_LIST,
)
def filter_sort_tasks():
    """The list, oldest first unless `sort_order` says otherwise (the frontend sends none)."""
    return list_page(list_query(filter_sort_query_schema), g.user_id)


@bp.get("/tasks/search")
@operation(
    "Search tasks",
    description="The list, searched: `keyword` (required) is matched case-insensitively and literally in title and "
    "description. Takes every list parameter. A search that runs over its time bound "
    "(`SEARCH_STATEMENT_TIMEOUT_MS`) answers 503 `The search took too long; try a more specific keyword`.",
    query=search_query_schema,
    response=TASK_LIST,
)
def search_tasks():
    return list_page(list_query(search_query_schema), g.user_id)


@bp.post("/tasks")
@operation(
    "Create a task",
    body=request_body(task_create_schema, "The new task's fields; `title` is required, unknown fields are ignored."),
    response=response("The created task.", TaskEnvelopeSchema),
    etag=True,
    idempotent=True,
)
@session_in_statement
def create_task():
    fields = json_body(task_create_schema)
    key = idempotency.request_key()
    if key is None:
        user_id, session = caller()
        row = on_live_connection(lambda db: task_store.create_task(db, user_id, fields, session=session), True)
        if row is None:  # the session is dead, or died just now
            confirm_session()
            row = task_store.create_task(get_db(), g.user_id, fields)
        return one_task(row)
    confirm_session()
    return created_under_key(idempotency.create_task_once(get_db(), g.user_id, key, fields, created_body))


@bp.get("/tasks/<int(signed=True):task_id>")
@operation("Get a task", response=TASK, etag=True, conditional=True, errors=[404])
@session_in_statement
def get_task(task_id):
    user_id, session = caller()
    row = on_live_connection(lambda db: task_store.get_task(db, user_id, task_id, session))
    if not_modified(row):
        return "", 304, {"ETag": etag(row)}
    return one_task(row)


@bp.put("/tasks/<int(signed=True):task_id>")
@operation(
    "Update a task",
    description="Only the fields sent change. Completing a recurring task creates its next occurrence.",
    body=request_body(task_update_schema, "Any task fields, and `completed`."),
    response=CHANGED_TASK,
    etag=True,
    conditional=True,
    errors=[404],
)
@session_in_statement
def update_task(task_id):
    changes = json_body(task_update_schema)
    versions, (user_id, session) = if_match_versions(task_id), caller()
    return task_and_next(
        *on_live_connection(lambda db: task_store.update_task(db, user_id, task_id, changes, versions, session), True)
    )


@bp.delete("/tasks/<int(signed=True):task_id>")
@operation("Delete a task", response=response("Deleted.", DeletedEnvelopeSchema), conditional=True, errors=[404])
@session_in_statement
def delete_task(task_id):
    versions, (user_id, session) = if_match_versions(task_id), caller()
    on_live_connection(lambda db: task_store.delete_task(db, user_id, task_id, versions, session), writes=True)
    return {"data": {"ok": True}}


@bp.patch("/tasks/<int(signed=True):task_id>/complete")
@operation(
    "Complete, reopen or toggle a task",
    description='Without a body, toggles `completed`; `{"completed": true|false}` sets it, so a retry cannot flip '
    "it back. Completing a recurring task creates its next occurrence.",
    body=request_body(completion_schema, "Optional: the completion to set.", required=False),
    response=CHANGED_TASK,
    etag=True,
    conditional=True,
    errors=[404],
)
@session_in_statement
def complete_task(task_id):
    """No body toggles; `{"completed": bool}` sets, so a retry cannot flip it back."""
    versions, (user_id, session) = if_match_versions(task_id), caller()
    if has_body():
        completed = json_body(completion_schema)["completed"]
        written = on_live_connection(
            lambda db: task_store.set_task_completed(db, user_id, task_id, completed, versions, session), True
        )
    else:
        written = on_live_connection(lambda db: task_store.toggle_task(db, user_id, task_id, versions, session), True)
    return task_and_next(*written)


@bp.patch("/tasks/<int(signed=True):task_id>/mark-reminder-sent")
@operation("Mark a task's reminder as sent", response=TASK, etag=True, conditional=True, errors=[404])
def mark_reminder_sent(task_id):
    return one_task(task_store.mark_reminder_sent(get_db(), g.user_id, task_id, if_match_versions(task_id)))
