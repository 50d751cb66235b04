"""Each route's OpenAPI operation, declared on the route.

    @bp.get("/tasks/<int(signed=True):task_id>")
    @operation(
        "Get a task",
        response=response("The task.", TaskEnvelopeSchema),
        etag=True,
        conditional=True,
        errors=[404],
    )
    def get_task(task_id): ...

`operation` only attaches the description to the view function; the view runs
as before and parses its body and query string itself, with the schema objects
it names here. `openapi.py` reads the description from every view in the URL
map and adds what follows from the kind of route, so a route states only what
is its own:

- every operation can answer 405; unless it is `public` (health and the
  documentation), it needs a session and can answer 401, 429 and 503, and
  one that changes data (POST, PUT, PATCH, DELETE) 415;
- a path argument (`task_id`) is a parameter (see `openapi.PATH_PARAMETERS`);
- `query`: the schema the query string is parsed with: its fields are the
  parameters; 422;
- `body`: a JSON body (see `request_body`): 400, 413, 415 and 422;
- `conditional`: the task's ETag is honoured: a read takes `If-None-Match` and
  can answer 304, a write takes `If-Match` and can answer 412;
- `etag`: the 200 response carries the task's `ETag`;
- `idempotent`: the create takes `Idempotency-Key`;
- `errors`: any other statuses it can answer, such as 404.
"""

from dataclasses import dataclass

from marshmallow import Schema

ATTRIBUTE = "openapi_operation"


@dataclass(frozen=True)
class Operation:
    summary: str
    response: dict
    description: str | None = None
    tag: str | None = None  # "tasks", or "service" for public operations, unless given
    public: bool = False
    query: Schema | None = None
    body: dict | None = None
    etag: bool = False
    conditional: bool = False
    idempotent: bool = False
    errors: tuple[int, ...] = ()


def operation(summary, *, response, errors=(), **details):
    """Declare the view's OpenAPI operation (see the module docstring); the view itself is unchanged."""
    declared = Operation(summary, response, errors=tuple(errors), **details)

    def attach(view):
        setattr(view, ATTRIBUTE, declared)
        return view

    return attach


def operation_of(view):
    """The operation declared on a view function, or None."""
    return getattr(view, ATTRIBUTE, None)


def request_body(schema, description, *, required=True):
    """A JSON request body: `schema` is a marshmallow schema (class or the instance the view loads with)."""
    return {"required": required, "description": description, "content": {"application/json": {"schema": schema}}}


def response(description, schema, *, headers=None, media_type="application/json"):
    """A response and its body: a marshmallow schema, a component name such as "Error", or a JSON Schema dict."""
    described = {"description": description, "content": {media_type: {"schema": schema}}}
    if headers:
        described["headers"] = headers
    return described
