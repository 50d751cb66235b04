"""marshmallow schemas: what a request may carry and how a task is shown.

Input schemas ignore unknown fields (the frontend may send a whole task back)
and never accept `id`, `user_id`, `created_at` or `updated_at`.
"""

import functools
from datetime import UTC
from zoneinfo import available_timezones

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from . import webpush
from .models import PRIORITIES, RECURRENCE_PATTERNS, RECURRING_NEEDS_DUE_DATE

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


class UtcInput(fields.AwareDateTime):
    """An ISO-8601 datetime with an offset (a naive one is refused), stored as naive UTC."""

    MIN_YEAR, MAX_YEAR = 1900, 9998  # room to advance a recurring task by a year

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {"description": "ISO-8601 with an offset; years 1900 to 9998 in UTC."})
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        aware = super()._deserialize(value, attr, data, **kwargs)
        # Checked before converting (9999-12-31T23:00-05:00 has no UTC form) and after
        # (9998-12-31T23:00-05:00 is already 9999 in UTC, with no room left to recur).
        if not self.MIN_YEAR <= aware.year <= self.MAX_YEAR:
            raise ValidationError(self.out_of_range)
        utc = aware.astimezone(UTC).replace(tzinfo=None)
        if not self.MIN_YEAR <= utc.year <= self.MAX_YEAR:
            raise ValidationError(self.out_of_range)
        return utc

    @property
    def out_of_range(self):
        return f"Must be between the years {self.MIN_YEAR} and {self.MAX_YEAR} (in UTC)."


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


def _task_fields():
    return {
        "title": text(TITLE_MAX, min_length=1, required=True),
        "description": text(DESCRIPTION_MAX, allow_none=True),
        "priority": fields.String(validate=validate.OneOf(PRIORITIES)),
        "category": text(CATEGORY_MAX, allow_none=True),
        "tags": fields.List(text(TAG_MAX, min_length=1), validate=validate.Length(max=TAGS_MAX)),
        "due_date": UtcInput(allow_none=True),
        "recurrence_pattern": fields.String(allow_none=True, validate=validate.OneOf(RECURRENCE_PATTERNS)),
        "remind_at": UtcInput(allow_none=True),
    }


class TaskCreateSchema(Schema.from_dict(_task_fields())):
    class Meta:
        unknown = EXCLUDE

    @validates_schema
    def recurring_needs_due_date(self, data, **kwargs):
        if data.get("recurrence_pattern") and data.get("due_date") is None:
            raise ValidationError(RECURRING_NEEDS_DUE_DATE, "due_date")


class TaskUpdateSchema(Schema.from_dict({**_task_fields(), "completed": StrictBoolean()})):
    """Partial: only the fields sent are returned, and only they change."""

    class Meta:
        unknown = EXCLUDE


class CompletionSchema(Schema):
    completed = StrictBoolean(required=True)

    class Meta:
        unknown = EXCLUDE


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
    due_date = UtcDateTime(required=True, allow_none=True)
    recurrence_pattern = fields.String(required=True, allow_none=True, validate=validate.OneOf(RECURRENCE_PATTERNS))
    is_recurring = fields.Function(
        lambda row: row.recurrence_pattern is not None, required=True, metadata={"type": "boolean"}
    )
    remind_at = UtcDateTime(required=True, allow_none=True)
    reminder_sent = fields.Boolean(required=True)


def task_output(row):
    """What `TaskSchema().dump(row)` gives, without marshmallow's per-field dispatch.

    Listing is the hot path, and dumping through marshmallow cost more than the
    whole database round trip. The row's values are already the output types;
    its naive UTC timestamps are written with an offset by the JSON provider.
    The tests check that both give the same JSON for every kind of task.
    """
    output = dict(row._mapping)
    output["is_recurring"] = output["recurrence_pattern"] is not None
    return output


class ListQuerySchema(Schema):
    """The query string of `GET /api/tasks`; every parameter is optional."""

    class Meta:
        unknown = EXCLUDE

    status = fields.String(validate=validate.OneOf(("all", "pending", "completed")))
    priority = CommaList(fields.String(validate=validate.OneOf(PRIORITIES)), validate=validate.Length(min=1))
    category = text(CATEGORY_MAX)
    tags = CommaList(text(TAG_MAX, min_length=1), validate=validate.Length(min=1, max=TAGS_MAX))
    q = text(SEARCH_MAX)
    due_before = UtcInput()
    due_after = UtcInput()
    overdue = QueryBoolean()
    reminder_due = QueryBoolean()
    sort_by = fields.String(validate=validate.OneOf(("created_at", "updated_at", "due_date", "priority", "title")))
    sort_order = fields.String(validate=validate.OneOf(("asc", "desc")))
    limit = fields.Integer(strict=False, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=1000))


class SearchQuerySchema(ListQuerySchema):
    """`GET /api/tasks/search?keyword=...`: the list's parameters, with a required keyword."""

    q = text(SEARCH_MAX, min_length=1, required=True, data_key="keyword")


# -- Settings and push subscriptions ------------------------------------------------

# Not zones: the system's link to its own zone, and tzdata's placeholders.
NOT_TIME_ZONES = frozenset({"localtime", "posixrules", "Factory"})
TIME_ZONE_EXAMPLE = "Europe/Berlin"


@functools.cache
def time_zone_names():
    return frozenset(available_timezones()) - NOT_TIME_ZONES


class TimeZone(fields.String):
    """An IANA time zone name that zoneinfo knows, spelled exactly (`Europe/Berlin`, `UTC`)."""

    def _deserialize(self, value, attr, data, **kwargs):
        name = super()._deserialize(value, attr, data, **kwargs)
        if name not in time_zone_names():
            raise ValidationError("Must be an IANA time zone name, such as Europe/Berlin or UTC.")
        return name


class SettingsSchema(Schema):
    """A user's settings: `PUT /api/settings` takes them, `GET` shows them."""

    class Meta:
        unknown = EXCLUDE

    time_zone = TimeZone(
        required=True,
        metadata={
            "description": "IANA time zone name; reminders show times in it. Default `UTC`.",
            "example": TIME_ZONE_EXAMPLE,
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
                "description": "The push service's URL for this browser: https, on a DNS name.",
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
task_schema = TaskSchema()
tasks_schema = TaskSchema(many=True)
list_query_schema = ListQuerySchema()
search_query_schema = SearchQuerySchema()


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


class TaskEnvelopeSchema(Schema):
    data = fields.Nested(TaskSchema, required=True)


class ChangedTaskEnvelopeSchema(TaskEnvelopeSchema):
    """A changed task; completing a recurring task adds its next occurrence."""

    next_task = fields.Nested(TaskSchema)


class TaskListEnvelopeSchema(Schema):
    data = fields.List(fields.Nested(TaskSchema), required=True)
    next_cursor = fields.String(metadata={"description": "Present when more tasks follow: pass it as `cursor`."})


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
