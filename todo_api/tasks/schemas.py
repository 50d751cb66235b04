"""marshmallow schemas: what a request may carry and how a task is shown.

Input schemas ignore unknown fields (the frontend may send a whole task back)
and never accept `id`, `user_id`, `created_at` or `updated_at`.
"""

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from todo_api.db.tables import PRIORITIES, SHOWN_TASK_COLUMNS
from todo_api.reminders import endpoints as webpush
from todo_api.tasks.recurrence import RECURRENCE_PATTERNS, RECURRING_NEEDS_DUE_DATE
from todo_api.timezones import TIME_ZONES, naive_utc

TITLE_MAX = 255
DESCRIPTION_MAX = 10_000
CATEGORY_MAX = 100
TAGS_MAX = 50
TAG_MAX = 50
# A search costs each task time linear in its length plus up to the square of the keyword's (see listing.py).
SEARCH_MAX = 100


def storable_text(value):
    """Reject what the database cannot store: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Must be valid Unicode text.") from None


def not_blank(value):
    if not value.strip():
        raise ValidationError("Must not be blank.")


def text(max_length, min_length=0, **kwargs):
    checks = [validate.Length(min=min_length or None, max=max_length), storable_text]
    if min_length:
        checks.append(not_blank)
    return fields.String(validate=checks, **kwargs)


class StrictBoolean(fields.Boolean):
    """JSON true or false only: not 1, "yes" or "true"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value is True or value is False:
            return value
        raise self.make_error("invalid")


def empty_is_null(value):
    """The frontend sends `""` for a field left empty: it means null."""
    return None if value == "" else value


class WallClock(NamedTuple):
    """A date or date-time given without an offset: a time on the user's wall clock."""

    local: datetime  # naive; midnight for a calendar date
    all_day: bool  # given as a calendar date


# YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS[.ffffff]]: what <input type="date"> and "datetime-local" give.
WALL_CLOCK = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?)?"
)
WHEN_FORMS = (
    "ISO-8601 with an offset (`2026-01-30T10:00:00+01:00`, kept as that instant and shown in UTC), a calendar "
    "date `2026-01-30` (all day, on the user's calendar), or a date and time without an offset "
    "`2026-01-30T10:00[:SS[.ffffff]]` (on the user's wall clock, in their time zone; shown as given)."
)


class UtcInput(fields.AwareDateTime):
    """A moment: ISO-8601 with an offset, stored as naive UTC; or, without an offset, a
    `WallClock` (a calendar date, or a date and time) for the user's time zone to place."""

    MIN_YEAR, MAX_YEAR = 1900, 9998  # room to advance a recurring task by a year
    default_error_messages = {"invalid_date": "Not a valid date."}

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {"description": f"{WHEN_FORMS} Years 1900 to 9998."})
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and (match := WALL_CLOCK.fullmatch(value)):
            return self.wall_clock(match)
        aware = super()._deserialize(value, attr, data, **kwargs)
        # Checked before converting (9999-12-31T23:00-05:00 has no UTC form) and after
        # (9998-12-31T23:00-05:00 is already 9999 in UTC, with no room left to recur).
        if not self.MIN_YEAR <= aware.year <= self.MAX_YEAR:
            raise ValidationError(self.out_of_range)
        utc = naive_utc(aware)
        if not self.MIN_YEAR <= utc.year <= self.MAX_YEAR:
            raise ValidationError(self.out_of_range)
        return utc

    def wall_clock(self, match):
        all_day = match[4] is None
        year, month, day, hour, minute, second, fraction = match.groups(default="0")
        try:
            local = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second), int(fraction.ljust(6, "0"))
            )
        except ValueError:
            raise self.make_error("invalid_date" if all_day else "invalid", obj_type="datetime") from None
        if not self.MIN_YEAR <= local.year <= self.MAX_YEAR:
            raise ValidationError(f"Must be between the years {self.MIN_YEAR} and {self.MAX_YEAR}.")
        return WallClock(local, all_day)

    @property
    def out_of_range(self):
        return f"Must be between the years {self.MIN_YEAR} and {self.MAX_YEAR} (in UTC)."


# Where each moment a body may carry is stored: (instant column, wall-clock column, all-day column).
MOMENT_COLUMNS = {
    "due_date": ("due_date", "due_local", "due_all_day"),
    "remind_at": ("remind_at", "remind_local", None),
}


def stored_moments(data, replacing):
    """Body fields to columns: an instant goes to `due_date`/`remind_at`, a wall-clock
    value to `due_local`/`remind_local` (its instant is computed in the user's zone
    when it is written). `replacing` (an update) also clears what the old value kept.

    A create with instants only has exactly the fields it always had, so
    Idempotency-Key fingerprints stored before wall-clock dates existed still match.
    """
    for field, (instant, local, all_day) in MOMENT_COLUMNS.items():
        if field not in data:
            continue
        value = data.pop(field)
        if isinstance(value, WallClock):
            data[local] = value.local
            if all_day:
                data[all_day] = value.all_day
            continue
        data[instant] = value
        if replacing:
            data[local] = None
            if all_day:
                data[all_day] = False
    return data


class CommaList(fields.List):
    """A query-string list: `?priority=low,high`."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return super()._deserialize([item.strip() for item in value.split(",")], attr, data, **kwargs)


class QueryBoolean(fields.Boolean):
    """`true` or `false` in a query string, nothing vaguer."""

    truthy = {"true"}
    falsy = {"false"}


class UtcDateTime(fields.DateTime):
    """Stored timestamps are naive UTC; show them with an explicit offset."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat()


class ShownMoment(UtcDateTime):
    """A due date or reminder: as given on the wall clock (no offset) when it was given
    so, else its instant in UTC with an offset."""

    def __init__(self, local_attribute, **kwargs):
        super().__init__(**kwargs)
        self.local_attribute = local_attribute

    def _serialize(self, value, attr, obj, **kwargs):
        local = self.get_value(obj, self.local_attribute)
        if local is not None:
            return local.isoformat()
        return super()._serialize(value, attr, obj, **kwargs)


def _task_fields():
    return {
        "title": text(TITLE_MAX, min_length=1, required=True),
        "description": text(DESCRIPTION_MAX, allow_none=True),
        "priority": fields.String(validate=validate.OneOf(PRIORITIES)),
        "category": text(CATEGORY_MAX, allow_none=True),
        "tags": fields.List(text(TAG_MAX, min_length=1), validate=validate.Length(max=TAGS_MAX)),
        "due_date": UtcInput(allow_none=True, pre_load=[empty_is_null]),
        "recurrence_pattern": fields.String(
            allow_none=True,
            validate=validate.OneOf(RECURRENCE_PATTERNS),
            pre_load=[empty_is_null],
            metadata={"description": '`""` means null.', "enum": [*RECURRENCE_PATTERNS, "", None]},
        ),
        "remind_at": UtcInput(allow_none=True, pre_load=[empty_is_null]),
    }


class TaskCreateSchema(Schema.from_dict(_task_fields())):
    class Meta:
        unknown = EXCLUDE

    @validates_schema
    def recurring_needs_due_date(self, data, **kwargs):
        if data.get("recurrence_pattern") and data.get("due_date") is None:
            raise ValidationError(RECURRING_NEEDS_DUE_DATE, "due_date")

    @post_load
    def to_columns(self, data, **kwargs):
        return stored_moments(data, replacing=False)


class TaskUpdateSchema(Schema.from_dict({**_task_fields(), "completed": StrictBoolean()})):
    """Partial: only the fields sent are returned, and only they change."""

    class Meta:
        unknown = EXCLUDE

    @post_load
    def to_columns(self, data, **kwargs):
        return stored_moments(data, replacing=True)


class CompletionSchema(Schema):
    completed = StrictBoolean(required=True)

    class Meta:
        unknown = EXCLUDE


SHOWN_MOMENT = (
    "Given with an offset: the instant, in UTC with `+00:00`. Given without one: as given, without an offset "
    "(`2026-01-30T00:00:00` for a calendar date, see `due_all_day`; `2026-01-30T10:00:00` for a wall-clock time)."
)


class TaskSchema(Schema):
    """A task as every response shows it; every field is always present."""

    id = fields.Integer(required=True)
    user_id = fields.String(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True, allow_none=True)
    completed = fields.Boolean(required=True)
    priority = fields.String(required=True, validate=validate.OneOf(PRIORITIES))
    category = fields.String(required=True, allow_none=True)
    tags = fields.List(fields.String(), required=True)
    created_at = UtcDateTime(required=True)
    updated_at = UtcDateTime(required=True)
    due_date = ShownMoment("due_local", required=True, allow_none=True, metadata={"description": SHOWN_MOMENT})
    due_all_day = fields.Boolean(
        required=True, metadata={"description": "The due date was given as a calendar date: due all that day."}
    )
    recurrence_pattern = fields.String(required=True, allow_none=True, validate=validate.OneOf(RECURRENCE_PATTERNS))
    is_recurring = fields.Function(
        lambda row: row.recurrence_pattern is not None, required=True, metadata={"type": "boolean"}
    )
    remind_at = ShownMoment("remind_local", required=True, allow_none=True, metadata={"description": SHOWN_MOMENT})
    reminder_sent = fields.Boolean(required=True)


TASK_COLUMNS = tuple(column.key for column in SHOWN_TASK_COLUMNS)


def task_output(row):
    """What `TaskSchema().dump(row)` gives, without marshmallow's per-field dispatch.

    Listing is the hot path, and dumping through marshmallow cost more than the
    whole database round trip. `row` holds the task's shown columns in order
    (as the task store's SELECTs and RETURNINGs give them), already of the
    output types; its naive UTC timestamps are written with an offset by the
    JSON provider, and a wall-clock value replaces its instant, written without
    one. The tests check that both give the same JSON for every kind of task.
    """
    output = dict(zip(TASK_COLUMNS, row, strict=True))
    due_local = output.pop("due_local")
    if due_local is not None:
        output["due_date"] = due_local.isoformat()
    remind_local = output.pop("remind_local")
    if remind_local is not None:
        output["remind_at"] = remind_local.isoformat()
    output["is_recurring"] = output["recurrence_pattern"] is not None
    return output


SORT_FIELDS = ("created_at", "updated_at", "due_date", "priority", "title")


@dataclass(frozen=True, kw_only=True)
class ListQuery:
    """A validated list query (`ListQuerySchema`'s result): the sort, the page, and the filters, None when absent."""

    status: str  # all, pending or completed
    sort_by: str  # one of SORT_FIELDS
    sort_order: str  # asc or desc
    limit: int | None = None  # None: as many as fit in a response, up to `listing.CEILING`
    cursor: str | None = None
    priority: list[str] | None = None
    category: str | None = None
    tags: list[str] | None = None
    q: str | None = None
    due_before: datetime | WallClock | None = None  # an instant (naive UTC), or a wall-clock time to place
    due_after: datetime | WallClock | None = None
    overdue: bool | None = None
    reminder_due: bool | None = None

    @property
    def descending(self) -> bool:
        return self.sort_order == "desc"


def sort_order_field(default):
    return fields.String(load_default=default, validate=validate.OneOf(("asc", "desc")))


class ListQuerySchema(Schema):
    """The query string of `GET /api/tasks`; every parameter is optional. Newest first by default."""

    class Meta:
        unknown = EXCLUDE

    status = fields.String(load_default="all", validate=validate.OneOf(("all", "pending", "completed")))
    priority = CommaList(fields.String(validate=validate.OneOf(PRIORITIES)), validate=validate.Length(min=1))
    category = text(CATEGORY_MAX)
    tags = CommaList(text(TAG_MAX, min_length=1), validate=validate.Length(min=1, max=TAGS_MAX))
    q = text(SEARCH_MAX)
    due_before = UtcInput()
    due_after = UtcInput()
    overdue = QueryBoolean()
    reminder_due = QueryBoolean()
    sort_by = fields.String(load_default="created_at", validate=validate.OneOf(SORT_FIELDS))
    sort_order = sort_order_field("desc")
    limit = fields.Integer(strict=False, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=1000))

    @post_load
    def to_query(self, data, **kwargs):
        return ListQuery(**data)


class FilterSortQuerySchema(ListQuerySchema):
    """`GET /api/tasks/filter-sort`: the list's parameters, oldest first by default, as the frontend's own
    backend answered (the frontend sends no `sort_order`)."""

    sort_order = sort_order_field("asc")


class SearchQuerySchema(ListQuerySchema):
    """`GET /api/tasks/search?keyword=...`: the list's parameters, with a required keyword."""

    q = text(SEARCH_MAX, min_length=1, required=True, data_key="keyword")


class ChangesQuerySchema(Schema):
    """`GET /api/tasks/changes`: the token of the last answer (none: from the beginning) and a page size."""

    class Meta:
        unknown = EXCLUDE

    since = fields.String(
        validate=validate.Length(min=1, max=100_000),
        metadata={"description": "`sync_token` of the previous answer; without it, every task, from the start."},
    )
    limit = fields.Integer(strict=False, load_default=1000, validate=validate.Range(min=1, max=1000))


# -- Settings and push subscriptions ------------------------------------------------


def known_time_zone(name):
    # Checked against the set, not listed as an enum in the OpenAPI document: there are some 600.
    if name not in TIME_ZONES:
        raise ValidationError("Must be an IANA time zone name, such as Europe/Berlin or UTC.")


class SettingsSchema(Schema):
    """A user's settings, as `PUT /api/settings` takes them and both routes show them."""

    class Meta:
        unknown = EXCLUDE

    time_zone = fields.String(
        required=True,
        validate=known_time_zone,
        metadata={
            "description": "IANA time zone name, such as `Europe/Berlin`; `UTC` by default. Dates and times given "
            "without an offset are read in it.",
            "examples": ["Europe/Berlin", "America/New_York", "UTC"],
        },
    )


class CheckedText(fields.String):
    """A string that `problem(value)` accepts (it returns None), stored as `canonical(value)`."""

    def __init__(self, problem, canonical=None, **kwargs):
        super().__init__(**kwargs)
        self.problem = problem
        self.canonical = canonical

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        message = self.problem(text)
        if message:
            raise ValidationError(message)
        return self.canonical(text) if self.canonical else text


# A subscription as a browser makes one (for the OpenAPI document's example: a
# real P-256 point and a 16-byte secret, base64url).
SUBSCRIPTION_EXAMPLE = {
    "endpoint": "https://fcm.googleapis.com/fcm/send/dpH5lCsTSSM:APA91bHqjZxM0VImWWqDRN7U0a3AycjUf4O-byuxb",
    "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
    "auth": "tBHItJI5svbpez7KI4CCXg",
}


def _subscription_schema(allow_insecure):
    endpoint_problem = functools.partial(webpush.endpoint_problem, allow_insecure=allow_insecure)

    class SubscriptionSchema(Schema):
        """A browser's push subscription: `PushSubscription.toJSON()`'s endpoint and keys, side by side."""

        class Meta:
            unknown = EXCLUDE

        endpoint = CheckedText(
            endpoint_problem,
            required=True,
            validate=validate.Length(min=1, max=webpush.MAX_ENDPOINT_LENGTH),
            metadata={
                "description": "The push service's URL for this browser: https, on a public DNS name (no IP "
                "address, local name or name DNS does not allow).",
                "example": SUBSCRIPTION_EXAMPLE["endpoint"],
            },
        )
        p256dh = CheckedText(
            webpush.p256dh_problem,
            webpush.canonical_key,
            required=True,
            validate=validate.Length(max=200),
            metadata={
                "description": "The browser's P-256 public key: base64url (padding optional) of the 65-byte "
                "uncompressed point.",
                "example": SUBSCRIPTION_EXAMPLE["p256dh"],
            },
        )
        auth = CheckedText(
            webpush.auth_problem,
            webpush.canonical_key,
            required=True,
            validate=validate.Length(max=200),
            metadata={
                "description": "The subscription's authentication secret: base64url of 16 bytes.",
                "example": SUBSCRIPTION_EXAMPLE["auth"],
            },
        )

    return SubscriptionSchema()


class UnsubscribeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    endpoint = text(
        webpush.MAX_ENDPOINT_LENGTH,
        required=True,
        metadata={"description": "The endpoint to remove.", "example": SUBSCRIPTION_EXAMPLE["endpoint"]},
    )


subscription_schemas = {allow_insecure: _subscription_schema(allow_insecure) for allow_insecure in (False, True)}
settings_schema = SettingsSchema()
unsubscribe_schema = UnsubscribeSchema()
task_create_schema = TaskCreateSchema()
task_update_schema = TaskUpdateSchema(partial=True)
completion_schema = CompletionSchema()
list_query_schema = ListQuerySchema()
filter_sort_query_schema = FilterSortQuerySchema()
search_query_schema = SearchQuerySchema()
changes_query_schema = ChangesQuerySchema()


# -- Response shapes ----------------------------------------------------------
# The routes build these bodies directly (see `task_output`); these schemas
# describe them for the OpenAPI document.

VALIDATION_MESSAGES = {
    "oneOf": [
        {"type": "array", "items": {"type": "string"}},
        {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    ],
}


class ErrorSchema(Schema):
    """Every error: a human-readable `detail`; a 422 adds `errors`, field by field
    (a list's field by item index: `{"tags": {"1": ["..."]}}`)."""

    detail = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.Raw(metadata=VALIDATION_MESSAGES))
    operation = fields.Integer(
        metadata={"description": "`POST /api/tasks/batch`: the index of the operation that failed."}
    )


class TaskEnvelopeSchema(Schema):
    data = fields.Nested(TaskSchema, required=True)


class ChangedTaskEnvelopeSchema(TaskEnvelopeSchema):
    """A changed task; a completion that created a recurring task's next occurrence adds it."""

    next_task = fields.Nested(TaskSchema)


class TaskListEnvelopeSchema(Schema):
    data = fields.List(fields.Nested(TaskSchema), required=True)
    next_cursor = fields.String(metadata={"description": "Present when more tasks follow: pass it as `cursor`."})


class ChangesEnvelopeSchema(Schema):
    data = fields.List(fields.Nested(TaskSchema), required=True, metadata={"description": "Upsert each, in order."})
    deleted = fields.List(fields.Integer(), required=True, metadata={"description": "Ids of tasks to drop."})
    sync_token = fields.String(required=True, metadata={"description": "Pass it as `since` next time."})
    has_more = fields.Boolean(required=True, metadata={"description": "More changes follow: call again at once."})


class BatchOperationSchema(Schema):
    """One operation of a batch, as documented (`tasks.batch` checks it, and its `fields` with the single
    route's schema)."""

    op = fields.String(required=True, validate=validate.OneOf(("create", "update", "complete", "delete")))
    temp_id = fields.String(metadata={"description": "create: a name later operations may use as `id`."})
    id = fields.Raw(metadata={"description": "update, complete, delete: a task id, or an earlier create's temp_id."})
    fields_ = fields.Dict(data_key="fields", metadata={"description": "create: as POST /api/tasks; update: as PUT."})
    completed = fields.Boolean(metadata={"description": "complete: the completion to set."})
    if_match = fields.String(metadata={"description": "update, delete: an ETag, as the If-Match header takes."})


class BatchRequestSchema(Schema):
    operations = fields.List(fields.Nested(BatchOperationSchema), required=True, validate=validate.Length(1, 100))


class BatchEnvelopeSchema(Schema):
    data = fields.List(
        fields.Dict(),
        required=True,
        metadata={
            "description": "Per operation: the task (with `next_task` where a completion made one), or "
            '`{"id": 7, "deleted": true}`.'
        },
    )
    temp_ids = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    sync_token = fields.String(required=True, metadata={"description": "The change log's position after the batch."})


class DeletedSchema(Schema):
    ok = fields.Boolean(required=True, metadata={"enum": [True]})


class DeletedEnvelopeSchema(Schema):
    data = fields.Nested(DeletedSchema, required=True)


class SettingsEnvelopeSchema(Schema):
    data = fields.Nested(SettingsSchema, required=True)


class SubscriptionOutputSchema(Schema):
    """A stored subscription, without its keys."""

    id = fields.Integer(required=True)
    endpoint = fields.String(required=True)
    created_at = UtcDateTime(required=True)
    updated_at = UtcDateTime(required=True)


class SubscriptionEnvelopeSchema(Schema):
    data = fields.Nested(SubscriptionOutputSchema, required=True)


class UnsubscribedSchema(DeletedSchema):
    deleted = fields.Integer(
        required=True, metadata={"description": "How many of the caller's subscriptions were removed."}
    )


class UnsubscribedEnvelopeSchema(Schema):
    data = fields.Nested(UnsubscribedSchema, required=True)


class MessageSchema(Schema):
    message = fields.String(required=True)


class StatusSchema(Schema):
    status = fields.String(required=True)
