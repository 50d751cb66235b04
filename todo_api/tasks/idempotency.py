"""Idempotency-Key on `POST /api/tasks` and `POST /api/tasks/batch`: a retried write returns the first result.

A client that may retry a create (a timeout, a dropped connection) sends a key
of its choosing. The first request with that key claims it and creates the
task; the response body is stored with the key in the same transaction, so
claim, task and stored response exist together or not at all. A retry with the
same key and the same fields gets the stored response back, byte for byte, with
the task's ETag as it was created (the key's `created_at` is the task's first
version: one moment for both); the same key with other fields is refused (422). Keys belong to one user and live
24 hours, after which the key may be used again. A dead session neither
creates nor replays (401), and its claim is undone with the transaction.

Concurrent requests with one key meet at the table's primary key: the second
insert waits for the first transaction and then finds the key taken, so
exactly one task is created, across workers and instances.
"""

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
from flask import request
from marshmallow import ValidationError
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection, Row
from werkzeug.exceptions import UnprocessableEntity

from todo_api.auth.sessions import Caller, NotAuthenticated
from todo_api.db.connections import transaction
from todo_api.db.tables import MAX_IDEMPOTENCY_KEY_LENGTH, idempotency_key
from todo_api.db.upsert import upsert_per_dialect
from todo_api.tasks.store import Values, create_task
from todo_api.timezones import utcnow

HEADER = "Idempotency-Key"
KEY_LIFETIME = timedelta(hours=24)
BAD_KEY = f"Must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters."


class KeyReused(UnprocessableEntity):
    description = f"This {HEADER} was already used with a different request body"


def request_key():
    """The request's Idempotency-Key, None without one; 422 when it is not a valid key."""
    key = request.environ.get("HTTP_IDEMPOTENCY_KEY")  # the header, without Werkzeug's lookup by every name
    if key is None:
        return None
    if not (1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isascii() and key.isprintable()):
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


_CLAIM = upsert_per_dialect(_claim)
_STORED = _this_key(
    select(
        idempotency_key.c.request_hash,
        idempotency_key.c.response,
        idempotency_key.c.task_id,
        idempotency_key.c.created_at,
    )
)
_STORE_RESPONSE = _this_key(update(idempotency_key)).values(
    task_id=bindparam("created_task_id"), response=bindparam("body")
)
_FORGET_EXPIRED = delete(idempotency_key).where(
    idempotency_key.c.user_id == bindparam("owner_id"), idempotency_key.c.created_at < bindparam("cutoff")
)


class Created(NamedTuple):
    """A create's answer, first or replayed."""

    body: str  # the response body, JSON text, the same bytes every time
    task_id: int | None  # the task created (none for a batch)
    version: datetime  # the task's `updated_at` as created: its ETag then (a batch's: when it ran)
    replayed: bool


def create_task_once(db: Connection, caller: Caller, key: str, fields: Values, render: Callable[[Row], str]) -> Created:
    """Create the caller's task for this key once.

    `render(row)` turns the created task into the response body (JSON text),
    which is stored and given back to every retry while the key lives.
    """

    def create(now):
        row = create_task(db, caller, fields, now=now)
        return render(row), row.id, row.updated_at

    return run_once(db, caller, key, fingerprint(fields), create)


def run_once(
    db: Connection, caller: Caller, key: str, request_hash: str, work: Callable[[datetime], tuple[str, int | None, Any]]
) -> Created:
    """Do `work(now)` once for this key and request: it returns (response body, task id, version) and runs in
    the transaction that claims the key and stores the body, so all of it happens or none does. A retry gets
    the stored answer back; the same key with another request is 422."""
    now = utcnow()
    cutoff = now - KEY_LIFETIME
    params = {"owner_id": caller.user_id, "idempotency_key": key}
    with transaction(db):
        claimed = db.execute(
            _CLAIM[db.dialect.name], {**params, "fingerprint": request_hash, "now": now, "cutoff": cutoff}
        ).first()
        if claimed is None:  # taken: this is a retry (nothing was written, so leaving the transaction is all)
            stored = db.execute(caller.guarded(_STORED), {**params, **caller.params}).first()
            if stored is None:  # the key is taken, so only a dead session finds nothing
                raise NotAuthenticated()
            if stored.request_hash != request_hash:
                raise KeyReused()
            return Created(stored.response, stored.task_id, stored.created_at, replayed=True)
        body, task_id, version = work(now)
        db.execute(_STORE_RESPONSE, {**params, "created_task_id": task_id, "body": body})
    # A new key is the moment to drop this user's expired ones: an index range
    # scan of (user_id, created_at), outside the transaction above.
    db.execute(_FORGET_EXPIRED, {"owner_id": caller.user_id, "cutoff": cutoff})
    return Created(body, task_id, version, replayed=False)
