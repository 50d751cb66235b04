"""The tasks API: each view parses with a schema, runs one operation of the store on the request's
connection (`run_retrying_once`), and serializes.

Every route checks the caller's session in one way (`auth.require_session`):
the store's statements check it, and whatever a view answers but their rows
waits for the session's confirmation. Every response that carries one task
carries its ETag; writes to one task honour If-Match (see `conditional`), and
creates honour Idempotency-Key (see `idempotency`).
"""

import functools

import orjson
from flask import Blueprint, Response, current_app, g, request

from todo_api.auth.sessions import confirm_session, require_session
from todo_api.db.connections import run_retrying_once
from todo_api.http.body import has_body, json_body
from todo_api.http.json import OPTIONS as JSON_OPTIONS
from todo_api.openapi.operations import operation, request_body, response
from todo_api.ratelimit import bounds
from todo_api.ratelimit.limits import count_more_requests
from todo_api.tasks import batch, changes, idempotency, listing, store
from todo_api.tasks.conditional import etag, etag_of, if_match_versions, not_modified
from todo_api.tasks.schemas import (
    BatchEnvelopeSchema,
    BatchRequestSchema,
    ChangedTaskEnvelopeSchema,
    ChangesEnvelopeSchema,
    DeletedEnvelopeSchema,
    ListQuery,
    TaskEnvelopeSchema,
    TaskListEnvelopeSchema,
    changes_query_schema,
    completion_schema,
    filter_sort_query_schema,
    list_query_schema,
    search_query_schema,
    task_create_schema,
    task_output,
    task_update_schema,
)

bp = Blueprint("tasks", __name__, url_prefix="/api")
require_session(bp)

LIST_DESCRIPTION = (
    "The caller's tasks, newest first unless sorted otherwise. Filters combine; ties break on `id`. Without "
    "`limit`, up to 1,000 tasks come back. A page also ends before the task that would take the response over "
    "`RESPONSE_MAX_BYTES` (1 MiB by default; a page always holds at least one task). When more follow, "
    "`next_cursor` is set."
)
TASK_LIST = response("One page of tasks.", TaskListEnvelopeSchema)
TASK = response("The task.", TaskEnvelopeSchema)
CHANGED_TASK = response(
    "The task; a completion that creates a recurring task's next occurrence adds it as `next_task`.",
    ChangedTaskEnvelopeSchema,
)


def list_query(schema) -> ListQuery:
    """The request's list query, loaded by `schema`; without a query string, what `schema` loads from none."""
    args = request.args
    return schema.load(args) if args else loaded_from_nothing(schema)


@functools.cache
def loaded_from_nothing(schema) -> ListQuery:
    return schema.load({})  # the same every time (a frozen ListQuery): loaded once per schema


def list_page(query: ListQuery):
    """One page of the caller's tasks, at most RESPONSE_MAX_BYTES long (see `listing.page_body`); an empty page
    only once their session is known to be live."""
    app, caller = current_app._get_current_object(), g.caller
    config, cursors = app.config, listing.get_cursors(app)
    timeout = config["SEARCH_STATEMENT_TIMEOUT_MS"]
    with bounds.page_work(caller.user_id) as work:  # a large page waits for the worker's heavy slot
        rows = run_retrying_once(lambda db: listing.find_tasks(db, caller, query, cursors, timeout), writes=False)
        if not rows:
            confirm_session(caller)
        work.fetched(rows)
        body = listing.page_body(rows, query, cursors, task_output, config["RESPONSE_MAX_BYTES"])
    return Response(body, mimetype="application/json")


JSON = {"mimetype": "application/json"}


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
def list_tasks():
    return list_page(list_query(list_query_schema))


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
    return list_page(list_query(filter_sort_query_schema))


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
    return list_page(list_query(search_query_schema))


@bp.post("/tasks")
@operation(
    "Create a task",
    body=request_body(task_create_schema, "The new task's fields; `title` is required, unknown fields are ignored."),
    response=response("The created task.", TaskEnvelopeSchema),
    etag=True,
    idempotent=True,
)
def create_task():
    fields = json_body(task_create_schema)
    key, caller = idempotency.request_key(), g.caller
    if key is None:
        return one_task(run_retrying_once(lambda db: store.create_task(db, caller, fields), writes=True))
    created = run_retrying_once(
        lambda db: idempotency.create_task_once(db, caller, key, fields, created_body), writes=True
    )
    return created_under_key(created)


@bp.get("/tasks/<int(signed=True):task_id>")
@operation("Get a task", response=TASK, etag=True, conditional=True, errors=[404])
def get_task(task_id):
    caller = g.caller
    row = run_retrying_once(lambda db: store.get_task(db, caller, task_id), writes=False)
    if not_modified(row):
        return "", 304, {"ETag": etag(row)}
    return one_task(row)


@bp.put("/tasks/<int(signed=True):task_id>")
@operation(
    "Update a task",
    description="Only the fields sent change. Completing a recurring task creates its next occurrence, once: "
    "completing it again after reopening it creates nothing, unless its next occurrence was deleted.",
    body=request_body(task_update_schema, "Any task fields, and `completed`."),
    response=CHANGED_TASK,
    etag=True,
    conditional=True,
    errors=[404],
)
def update_task(task_id):
    changes, versions, caller = json_body(task_update_schema), if_match_versions(task_id), g.caller
    written = run_retrying_once(lambda db: store.update_task(db, caller, task_id, changes, versions), writes=True)
    return task_and_next(*written)


@bp.delete("/tasks/<int(signed=True):task_id>")
@operation("Delete a task", response=response("Deleted.", DeletedEnvelopeSchema), conditional=True, errors=[404])
def delete_task(task_id):
    versions, caller = if_match_versions(task_id), g.caller
    run_retrying_once(lambda db: store.delete_task(db, caller, task_id, versions), writes=True)
    return {"data": {"ok": True}}


@bp.patch("/tasks/<int(signed=True):task_id>/complete")
@operation(
    "Complete, reopen or toggle a task",
    description='Without a body, toggles `completed`; `{"completed": true|false}` sets it, so a retry cannot flip '
    "it back. Completing a recurring task creates its next occurrence, once: completing it again after reopening "
    "it creates nothing, unless its next occurrence was deleted.",
    body=request_body(completion_schema, "Optional: the completion to set.", required=False),
    response=CHANGED_TASK,
    etag=True,
    conditional=True,
    errors=[404],
)
def complete_task(task_id):
    """No body toggles; `{"completed": bool}` sets, so a retry cannot flip it back."""
    versions, caller = if_match_versions(task_id), g.caller
    if has_body():
        completed = json_body(completion_schema)["completed"]
        written = run_retrying_once(
            lambda db: store.set_task_completed(db, caller, task_id, completed, versions), writes=True
        )
    else:
        written = run_retrying_once(lambda db: store.toggle_task(db, caller, task_id, versions), writes=True)
    return task_and_next(*written)


@bp.patch("/tasks/<int(signed=True):task_id>/mark-reminder-sent")
@operation("Mark a task's reminder as sent", response=TASK, etag=True, conditional=True, errors=[404])
def mark_reminder_sent(task_id):
    versions, caller = if_match_versions(task_id), g.caller
    return one_task(run_retrying_once(lambda db: store.mark_reminder_sent(db, caller, task_id, versions), writes=True))


@bp.get("/tasks/changes")
@operation(
    "Changes since a sync token",
    description="Without `since`: every task of the caller, and a `sync_token`. With `since`: the tasks created or "
    "changed after that token, each as it is now, and the ids of tasks deleted after it, then a new token. A client "
    "that applies every answer in order (upsert each task in `data`, drop each id in `deleted`) holds exactly the "
    "caller's tasks. With `has_more`, call again at once with the new token. A token of another user, or one that "
    "is not ours, is 422 naming `since`; one older than `SYNC_RETENTION_DAYS` is 410: sync again without `since`.",
    query=changes_query_schema,
    response=response("The changes, and the token to continue from.", ChangesEnvelopeSchema),
    errors=[410],
)
def task_changes():
    query, tokens, caller = changes_query_schema.load(request.args), changes.get_sync_tokens(), g.caller
    position = tokens.load(query["since"], caller.user_id) if "since" in query else None
    found = run_retrying_once(lambda db: changes.changes_since(db, caller, position, query["limit"]), writes=False)
    if not (found.tasks or found.deleted):
        confirm_session(caller)
    return json_response(
        {
            "data": [task_output(row) for row in found.tasks],
            "deleted": found.deleted,
            "sync_token": tokens.dump(caller.user_id, found.position),
            "has_more": found.has_more,
        }
    )


@bp.post("/tasks/batch")
@operation(
    "Apply many writes at once",
    description="Up to 100 operations (`create`, `update`, `complete`, `delete`), in one transaction: all are "
    "applied or none. Each is checked and answered as its single route is; `id` may name an earlier create's "
    "`temp_id`. The first operation that fails is the answer (its status, with `operation`, its index, and "
    "`errors`), and nothing is applied. Counts against the per-user rate limit as one request per operation.",
    body=request_body(BatchRequestSchema, "The operations, in order."),
    response=response("One result per operation, the temp ids' tasks and a sync token.", BatchEnvelopeSchema),
    idempotent=True,
    errors=[404, 412],
)
def batch_tasks():
    operations, key, caller = batch.load_operations(request.get_json()), idempotency.request_key(), g.caller
    count_more_requests(caller.user_id, len(operations) - 1)  # one request per operation
    if key is None:
        return Response(run_retrying_once(lambda db: batch_body(db, caller, operations), writes=True), **JSON)
    done = run_retrying_once(lambda db: batch_once(db, caller, key, operations), writes=True)
    return Response(done.body, headers={"Idempotent-Replayed": "true"} if done.replayed else None, **JSON)


def batch_body(db, caller, operations) -> str:
    """A batch applied, as the JSON text of its answer."""
    applied = batch.apply_batch(db, caller, operations)
    token = changes.get_sync_tokens().dump(caller.user_id, applied.position)
    return current_app.json.dumps({"data": applied.results, "temp_ids": applied.temp_ids, "sync_token": token})


def batch_once(db, caller, key, operations) -> idempotency.Created:
    """A batch under Idempotency-Key: applied once, its answer stored with the key for every retry."""

    def apply(now):
        return batch_body(db, caller, operations), None, now

    return idempotency.run_once(db, caller, key, idempotency.fingerprint(operations), apply)
