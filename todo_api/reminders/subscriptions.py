"""The caller's Web Push subscriptions: `POST /api/notifications/subscribe` and `DELETE .../unsubscribe`.

One row per endpoint. Subscribing an endpoint again replaces its keys and
gives it to the caller: a browser profile that another user signs in to
pushes that user's reminders from then on. Each statement checks the
caller's session (see `auth.sessions`).

A user has at most PUSH_SUBSCRIPTIONS_PER_USER subscriptions. Subscribing
refreshes the subscription's `updated_at` (the frontend subscribes again on
every visit); one subscription more than that drops the user's least recently
refreshed one: a browser still in use refreshes its own, one that went away
without unsubscribing does not.
"""

import functools

from flask import Blueprint, current_app, g
from sqlalchemy import DateTime, bindparam, delete, func, select

from todo_api.auth.sessions import Caller, NotAuthenticated, confirm_session, require_session
from todo_api.db.connections import run_retrying_once, transaction
from todo_api.db.tables import push_subscription
from todo_api.db.upsert import DIALECT_INSERTS
from todo_api.http.body import has_body, json_body
from todo_api.openapi.operations import operation, request_body, response
from todo_api.tasks.schemas import (
    SubscriptionEnvelopeSchema,
    UnsubscribedEnvelopeSchema,
    subscription_schemas,
    unsubscribe_schema,
)
from todo_api.timezones import utcnow

bp = Blueprint("notifications", __name__, url_prefix="/api/notifications")
require_session(bp)


@functools.lru_cache(maxsize=64)
def _upsert(dialect: str, guard):
    """Store a subscription (see the module's docstring) when `guard` (the caller's session) holds."""
    column = push_subscription.c
    columns = [column.user_id, column.endpoint, column.p256dh, column.auth, column.created_at, column.updated_at]
    given = select(
        bindparam("owner_id", type_=column.user_id.type),
        bindparam("endpoint", type_=column.endpoint.type),
        bindparam("p256dh", type_=column.p256dh.type),
        bindparam("auth", type_=column.auth.type),
        bindparam("now", type_=DateTime),
        bindparam("now", type_=DateTime),
    ).where(guard)
    statement = DIALECT_INSERTS[dialect](push_subscription).from_select(columns, given)
    moved = {name: statement.excluded[name] for name in ("user_id", "p256dh", "auth", "updated_at")}
    return statement.on_conflict_do_update(index_elements=[push_subscription.c.endpoint], set_=moved).returning(
        push_subscription.c.id,
        push_subscription.c.endpoint,
        push_subscription.c.created_at,
        push_subscription.c.updated_at,
    )


_OF_USER = push_subscription.c.user_id == bindparam("owner_id")
# One user's subscribe requests take turns, so that together they keep to the cap: on Postgres with a lock
# on the user id that ends with the transaction (so it holds through a transaction pooler too), on SQLite
# under the write lock every transaction takes.
_TAKE_TURNS = select(func.pg_advisory_xact_lock(func.hashtextextended(bindparam("owner_id"), 0)))
_OTHERS = push_subscription.c.id != bindparam("kept")
_KEPT_BESIDE = (
    select(push_subscription.c.id)
    .where(_OF_USER, _OTHERS)
    .order_by(push_subscription.c.updated_at.desc(), push_subscription.c.id.desc())
    .limit(bindparam("others"))
)
_EVICT = delete(push_subscription).where(_OF_USER, _OTHERS, push_subscription.c.id.not_in(_KEPT_BESIDE))
_UNSUBSCRIBE_ALL = delete(push_subscription).where(_OF_USER)
_UNSUBSCRIBE = _UNSUBSCRIBE_ALL.where(push_subscription.c.endpoint == bindparam("endpoint"))


def subscribe(db, caller: Caller, subscription, cap: int):
    """Store a subscription for the caller, and drop their least recently refreshed others past `cap`, in one
    transaction; returns its row (without keys)."""
    statement = _upsert(db.dialect.name, caller.guard)
    with transaction(db):
        if db.dialect.name == "postgresql":
            db.execute(_TAKE_TURNS, {"owner_id": caller.user_id}).all()
        row = db.execute(statement, {**caller.params, "now": utcnow(), **subscription}).first()
        if row is None:
            raise NotAuthenticated()
        db.execute(_EVICT, {"owner_id": caller.user_id, "kept": row.id, "others": cap - 1})
    return row


def unsubscribe(db, caller: Caller, endpoint=None):
    """Remove one of the caller's subscriptions, or all of them; returns how many were removed (none when their
    session is dead)."""
    if endpoint is None:
        return db.execute(caller.guarded(_UNSUBSCRIBE_ALL), caller.params).rowcount
    return db.execute(caller.guarded(_UNSUBSCRIBE), {**caller.params, "endpoint": endpoint}).rowcount


@bp.post("/subscribe")
@operation(
    "Store a Web Push subscription",
    description="The browser's `PushSubscription`: its endpoint and keys. One row per endpoint: subscribing an "
    "endpoint again replaces its keys, refreshes it and gives it to the caller. Reminders are pushed to every "
    "subscription of their user. A user has at most PUSH_SUBSCRIPTIONS_PER_USER (10) subscriptions: one more "
    "drops the least recently refreshed. The endpoint must be an https URL on a public DNS name.",
    # The https-only form: what production accepts.
    body=request_body(subscription_schemas[False], "The subscription; unknown fields are ignored."),
    response=response("The stored subscription, without its keys.", SubscriptionEnvelopeSchema),
    tag="notifications",
)
def subscribe_view():
    config = current_app.config
    subscription, caller = json_body(subscription_schemas[config["PUSH_ALLOW_INSECURE_ENDPOINTS"]]), g.caller
    cap = config["PUSH_SUBSCRIPTIONS_PER_USER"]
    row = run_retrying_once(lambda db: subscribe(db, caller, subscription, cap), writes=True)
    return {"data": dict(row._mapping)}


@bp.delete("/unsubscribe")
@operation(
    "Remove Web Push subscriptions",
    description='`{"endpoint": ...}` removes that subscription of the caller\'s; without a body, all of them are '
    "removed. Removing what is not there is not an error: `deleted` counts what was removed.",
    body=request_body(unsubscribe_schema, "Optional: the endpoint to remove.", required=False),
    response=response("Removed.", UnsubscribedEnvelopeSchema),
    tag="notifications",
)
def unsubscribe_view():
    """`{"endpoint": ...}` removes that subscription; no body (as the frontend sends it) removes them all."""
    endpoint, caller = json_body(unsubscribe_schema)["endpoint"] if has_body() else None, g.caller
    deleted = run_retrying_once(lambda db: unsubscribe(db, caller, endpoint), writes=True)
    if not deleted:  # as an empty list: answered only once the session is known to be live
        confirm_session(caller)
    return {"data": {"ok": True, "deleted": deleted}}
