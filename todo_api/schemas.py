"""marshmallow schemas: what a request may carry and how a task is shown.

Input schemas ignore unknown fields (the frontend may send a whole task back)
and never accept `id`, `user_id`, `created_at` or `updated_at`.
"""
from datetime import timezone

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from .models import PRIORITIES

TITLE_MAX = 255
DESCRIPTION_MAX = 10_000
CATEGORY_MAX = 100
TAGS_MAX = 50
TAG_MAX = 50


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


class UtcDateTime(fields.DateTime):
    """Stored timestamps are naive UTC; show them with an explicit offset."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()


def _task_fields():
    return {
        "title": text(TITLE_MAX, min_length=1, required=True),
        "description": text(DESCRIPTION_MAX, allow_none=True),
        "priority": fields.String(validate=validate.OneOf(PRIORITIES)),
        "category": text(CATEGORY_MAX, allow_none=True),
        "tags": fields.List(text(TAG_MAX, min_length=1), validate=validate.Length(max=TAGS_MAX)),
    }


class TaskCreateSchema(Schema.from_dict(_task_fields())):
    class Meta:
        unknown = EXCLUDE


class TaskUpdateSchema(Schema.from_dict({**_task_fields(), "completed": StrictBoolean()})):
    """Partial: only the fields sent are returned, and only they change."""

    class Meta:
        unknown = EXCLUDE


class CompletionSchema(Schema):
    completed = StrictBoolean(required=True)

    class Meta:
        unknown = EXCLUDE


class TaskSchema(Schema):
    id = fields.Integer()
    user_id = fields.String()
    title = fields.String()
    description = fields.String(allow_none=True)
    completed = fields.Boolean()
    priority = fields.String()
    category = fields.String(allow_none=True)
    tags = fields.List(fields.String())
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


task_create_schema = TaskCreateSchema()
task_update_schema = TaskUpdateSchema(partial=True)
completion_schema = CompletionSchema()
task_schema = TaskSchema()
tasks_schema = TaskSchema(many=True)
