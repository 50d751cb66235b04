"""A request's body: whether there is one, and its JSON loaded by a schema."""

from flask import request


def json_body(schema):
    """The request body, validated by `schema`: 422 if invalid, 400 if malformed, 415 if not JSON."""
    return schema.load(request.get_json())


def has_body():
    return bool(request.content_length) or request.environ.get("HTTP_TRANSFER_ENCODING") == "chunked"
