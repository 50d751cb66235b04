"""Idempotency-Key on `POST /api/tasks`: a retried create returns the first result.

A client that may retry a create (a timeout, a dropped connection) sends a key
of its choosing. The first request with that key claims it and creates the
task; the response body is stored with the key in the same transaction, so
claim, task and stored response exist together or not at all. A retry with the
same key and the same fields gets the stored response back, byte for byte; the
same key with other fields is refused (422). Keys belong to one user and live
24 hours, after which the key may be used again.

Concurrent requests with one key meet at the table's primary key: the second
insert waits for the first transaction and then finds the key taken, so
exactly one task is created, across workers and instances.
"""

import hashlib
from datetime import timedelta

import orjson
from flask import request
from marshmallow import ValidationError
from sqlalchemy import Column, DateTime, Integer, String, Table, Text, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from werkzeug.exceptions import UnprocessableEntity

from .database import transaction
from .models import create_task, metadata, utcnow

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
KEY_LIFETIME = timedelta(hours=24)
BAD_KEY = f"Must be 1 to {MAX_KEY_LENGTH} printable ASCII characters."

idempotency_key = Table(
    "idempotency_key",
    metadata,
    Column("user_id", String, primary_key=True),
    Column("key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("request_hash", String(64), nullable=False),  # SHA-256 of the request's fields, hex
    Column("task_id", Integer),  # the task created (no foreign key: deleting a task keeps its key)
    Column("response", Text),  # the response body, JSON; set in the claiming transaction
    Column("created_at", DateTime, nullable=False),  # naive UTC
)


class KeyReused(UnprocessableEntity):
    description = f"This {HEADER} was already used with a different request body"


def request_key():
    """The request's Idempotency-Key, None without one; 422 when it is not a valid key."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not (1 <= len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise ValidationError({HEADER: [BAD_KEY]})
    return key


def fingerprint(fields):
    """What makes two creates the same request: their validated fields, whatever the key
    order, spacing, time zone notation or ignored unknown fields of the JSON they came in."""
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS | orjson.OPT_NAIVE_UTC)).hexdigest()


def _claim(dialect_insert):
    """Insert the key, or take over an expired one; a row comes back only if this request now owns the key."""
    statement = dialect_insert(idempotency_key).values(
        user_id=bindparam("owner_id"),
        key=bindparam("idempotency_key"),
        request_hash=bindparam("fingerprint"),
        created_at=bindparam("now"),
    )
    return statement.on_conflict_do_update(
        index_elements=[idempotency_key.c.user_id, idempotency_key.c.key],
        set_={
            "request_hash": statement.excluded.request_hash,
            "created_at": statement.excluded.created_at,
            "task_id": None,
            "response": None,
        },
        where=idempotency_key.c.created_at < bindparam("cutoff"),
    ).returning(idempotency_key.c.created_at)


def _this_key(statement):
    return statement.where(
        idempotency_key.c.user_id == bindparam("owner_id"), idempotency_key.c.key == bindparam("idempotency_key")
    )


_CLAIM = {"postgresql": _claim(postgresql.insert), "sqlite": _claim(sqlite.insert)}
_STORED = _this_key(select(idempotency_key.c.request_hash, idempotency_key.c.response))
_STORE_RESPONSE = _this_key(update(idempotency_key)).values(
    task_id=bindparam("created_task_id"), response=bindparam("body")
)
_FORGET_EXPIRED = delete(idempotency_key).where(
    idempotency_key.c.user_id == bindparam("owner_id"), idempotency_key.c.created_at < bindparam("cutoff")
)


def create_task_once(db, user_id, key, fields, render):
    """Create the task for this key once; returns (response body, replayed).

    `render(row)` turns the created task into the response body (JSON text),
    which is stored and given back to every retry while the key lives.
    """
    now = utcnow()
    cutoff = now - KEY_LIFETIME
    request_hash = fingerprint(fields)
    params = {"owner_id": user_id, "idempotency_key": key}
    with transaction(db):
        claimed = db.execute(
            _CLAIM[db.dialect.name], {**params, "fingerprint": request_hash, "now": now, "cutoff": cutoff}
        ).first()
        if claimed is None:
            stored = db.execute(_STORED, params).one()
        else:
            row = create_task(db, user_id, fields)
            body = render(row)
            db.execute(_STORE_RESPONSE, {**params, "created_task_id": row.id, "body": body})
    if claimed is None:
        if stored.request_hash != request_hash:
            raise KeyReused()
        return stored.response, True
    # A new key is the moment to drop this user's expired ones: an index range
    # scan of (user_id, created_at), outside the transaction above.
    db.execute(_FORGET_EXPIRED, {"owner_id": user_id, "cutoff": cutoff})
    return body, False
