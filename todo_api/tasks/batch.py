"""`POST /api/tasks/batch`: up to 100 writes of the caller's tasks in one transaction, all or nothing.

Each operation is one of the single routes' writes, checked by the same
schema and applied by the same store function, so it answers alike (another
user's task is 404, a stale `if_match` 412). An operation may name the task
an earlier `create` made by that create's `temp_id`. The first operation that
fails rolls every earlier one back and is the answer: its status, with
`operation` (its index) and `errors`.
"""

from dataclasses import dataclass
from typing import Any, cast

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy.engine import Connection
from werkzeug.exceptions import HTTPException

from todo_api.auth.sessions import Caller
from todo_api.db.connections import transaction
from todo_api.tasks import changes, store
from todo_api.tasks.conditional import versions_named
from todo_api.tasks.schemas import StrictBoolean, task_create_schema, task_output, task_update_schema

MAX_OPERATIONS = 100
TEMP_ID_MAX = 64
OPERATIONS = ("create", "update", "complete", "delete")


class TaskReference(fields.Field):
    """A task id, or the `temp_id` of an earlier create of the same batch."""

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is int and 0 < value <= 2**31 - 1:
            return value
        if isinstance(value, str) and 1 <= len(value) <= TEMP_ID_MAX:
            return value
        raise ValidationError("Must be a task id or the temp_id of an earlier create.")


class OperationSchema(Schema):
    """One operation; its `fields` are checked by the single route's schema (see `load_operation`)."""

    class Meta:
        unknown = EXCLUDE

    op = fields.String(required=True, validate=validate.OneOf(OPERATIONS))
    temp_id = fields.String(validate=validate.Length(min=1, max=TEMP_ID_MAX))
    id = TaskReference()
    fields_ = fields.Dict(data_key="fields")
    completed = StrictBoolean()
    if_match = fields.String(validate=validate.Length(max=1000))

    @validates_schema
    def what_each_operation_takes(self, data, **kwargs):
        op = data.get("op")
        needed = {"create": ("fields",), "update": ("id", "fields"), "complete": ("id", "completed"), "delete": ("id",)}
        missing = [name for name in needed.get(op, ()) if data.get("fields_" if name == "fields" else name) is None]
        if missing:
            raise ValidationError({name: ["Missing data for required field."] for name in missing})
        if op != "create" and "temp_id" in data:
            raise ValidationError({"temp_id": ["Only a create takes a temp_id."]})


class BatchSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    operations = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, max=MAX_OPERATIONS))


operation_schema = OperationSchema()
batch_schema = BatchSchema()
FIELD_SCHEMAS: dict[str, Schema] = {"create": task_create_schema, "update": task_update_schema}


class OperationFailed(HTTPException):
    """Operation `index` of a batch failed: nothing was applied, and the answer is that operation's, with the
    operation's index and what was wrong with it (`errors`, by field)."""

    def __init__(self, index: int, error: HTTPException | ValidationError):
        if isinstance(error, ValidationError):
            code, detail, errors = 422, "Validation failed", error.normalized_messages()
        else:
            code, detail, errors = error.code or 500, error.description or "", {}
            if isinstance(error, store.NoSuchTask):
                errors = {"id": [detail]}
            elif isinstance(error, store.StaleTask):
                errors = {"if_match": [detail]}
        super().__init__(description=detail)
        self.code, self.index, self.cause = code, index, error
        self.fields = {"operation": index, "errors": errors}


@dataclass(frozen=True)
class Operation:
    op: str
    temp_id: str | None
    task: int | str | None  # an id, or an earlier create's temp_id
    fields: dict[str, Any]
    completed: bool | None
    if_match: str | None


def load_operations(body) -> list[Operation]:
    """The batch's operations, each checked as its single route checks it; OperationFailed(index, 422) for the
    first that is not valid, 422 for a body without a list of 1 to 100 of them."""
    operations = batch_schema.load(body)["operations"]
    loaded, temp_ids = [], set()
    for index, raw in enumerate(operations):
        try:
            operation = load_operation(raw)
            if operation.temp_id is not None and operation.temp_id in temp_ids:
                raise ValidationError({"temp_id": ["Used by an earlier create of this batch."]})
            if isinstance(operation.task, str) and operation.task not in temp_ids:
                raise ValidationError({"id": ["No earlier create of this batch has this temp_id."]})
        except ValidationError as error:
            raise OperationFailed(index, error) from None
        if operation.temp_id is not None:
            temp_ids.add(operation.temp_id)
        loaded.append(operation)
    return loaded


def load_operation(raw) -> Operation:
    if not isinstance(raw, dict):
        raise ValidationError({"_schema": ["Must be an object."]})
    data = operation_schema.load(raw)
    schema = FIELD_SCHEMAS.get(data["op"])
    try:
        loaded = schema.load(data["fields_"]) if schema is not None else {}
    except ValidationError as error:
        raise ValidationError({"fields": error.normalized_messages()}) from None
    return Operation(
        data["op"], data.get("temp_id"), data.get("id"), loaded, data.get("completed"), data.get("if_match")
    )


@dataclass(frozen=True)
class Applied:
    results: list[dict]
    temp_ids: dict[str, int]
    position: changes.Position


def apply_batch(db: Connection, caller: Caller, operations: list[Operation]) -> Applied:
    """Apply every operation in one transaction; OperationFailed for the first that fails, and nothing stays."""
    temp_ids: dict[str, int] = {}
    results = []
    with transaction(db):
        for index, operation in enumerate(operations):
            try:
                results.append(apply(db, caller, operation, temp_ids))
            except (HTTPException, ValidationError) as error:
                raise OperationFailed(index, error) from None
        position = changes.current_position(db)
    return Applied(results, temp_ids, position)


def apply(db: Connection, caller: Caller, operation: Operation, temp_ids: dict[str, int]) -> dict:
    """One operation, as its single route does it; the task (with `next_task` where a completion made one), or
    the deleted task's id."""
    if operation.op == "create":
        row = store.create_task(db, caller, operation.fields)
        if operation.temp_id is not None:
            temp_ids[operation.temp_id] = row.id
        return task_output(row)
    task_id = task_id_of(operation.task, temp_ids)
    versions = versions_named(operation.if_match, task_id)
    if operation.op == "delete":
        store.delete_task(db, caller, task_id, versions)
        return {"id": task_id, "deleted": True}
    if operation.op == "update":
        row, next_task = store.update_task(db, caller, task_id, operation.fields, versions)
    else:
        row, next_task = store.set_task_completed(db, caller, task_id, bool(operation.completed), versions)
    result = task_output(row)
    if next_task is not None:
        result["next_task"] = task_output(next_task)
    return result


def task_id_of(reference: int | str | None, temp_ids: dict[str, int]) -> int:
    """The task an operation names: its id, or the id an earlier create of the batch gave its temp_id (checked
    by `load_operations`, with the presence of `id`)."""
    if isinstance(reference, str):
        return temp_ids[reference]
    return cast(int, reference)
