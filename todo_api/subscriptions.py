"""The caller's Web Push subscriptions: `POST /api/notifications/subscribe` and `DELETE .../unsubscribe`.

One row per endpoint. Subscribing an endpoint again replaces its keys and
gives it to the caller: a browser profile that another user signs in to
pushes that user's reminders from then on.

A user has at most PUSH_SUBSCRIPTIONS_PER_USER subscriptions. Subscribing
refreshes the subscription's `updated_at` (the frontend subscribes again on
every visit); one subscription more than that drops the user's least recently
refreshed one: a browser still in use refreshes its own, one that went away
without unsubscribing does not.
"""

from flask import Blueprint, current_app, g
from sqlalchemy import DateTime, bindparam, delete, func, select

from .apidoc import operation, request_body, response
from .database import get_db, per_dialect, transaction
from .schemas import SubscriptionEnvelopeSchema, UnsubscribedEnvelopeSchema, subscription_schemas, unsubscribe_schema
from .tables import push_subscription
from .tasks import has_body, json_body, require_session
from .timezones import utcnow

bp = Blueprint("notifications", __name__, url_prefix="/api/notifications")
bp.before_request(require_session)


def _upsert(insert):
    statement = insert(push_subscription).values(
        user_id=bindparam("user_id"),
        endpoint=bindparam("endpoint"),
        p256dh=bindparam("p256dh"),
        auth=bindparam("auth"),
        created_at=bindparam("now", type_=DateTime),
        updated_at=bindparam("now", type_=DateTime),
    )
    moved = {name: statement.excluded[name] for name in ("user_id", "p256dh", "auth", "updated_at")}
    return statement.on_conflict_do_update(index_elements=[push_subscription.c.endpoint], set_=moved).returning(
        push_subscription.c.id,
        push_subscription.c.endpoint,
        push_subscription.c.created_at,
        push_subscription.c.updated_at,
    )


_SUBSCRIBE = per_dialect(_upsert)
_OF_USER = push_subscription.c.user_id == bindparam("user_id")
# One user's subscribe requests take turns, so that together they keep to the cap: on Postgres with a lock
# on the user id that ends with the transaction (so it holds through a transaction pooler too), on SQLite
# under the write lock every transaction takes.
_TAKE_TURNS = select(func.pg_advisory_xact_lock(func.hashtextextended(bindparam("user_id"), 0)))
_OTHERS = push_subscription.c.id != bindparam("kept")
_KEPT_BESIDE = (
    select(push_subscription.c.id)
    .where(_OF_USER, _OTHERS)
    .order_by(push_subscription.c.updated_at.desc(), push_subscription.c.id.desc())
    .limit(bindparam("others"))
)
_EVICT = delete(push_subscription).where(_OF_USER, _OTHERS, push_subscription.c.id.not_in(_KEPT_BESIDE))
_UNSUBSCRIBE_ALL = delete(push_subscription).where(push_subscription.c.user_id == bindparam("user_id"))
_UNSUBSCRIBE = _UNSUBSCRIBE_ALL.where(push_subscription.c.endpoint == bindparam("endpoint"))


def subscribe(db, user_id, subscription, cap):
    """Store a subscription for the user, and drop the least recently refreshed others past `cap`, in one
    transaction; returns its row (without keys)."""
    with transaction(db):
        if db.dialect.name == "postgresql":
            db.execute(_TAKE_TURNS, {"user_id": user_id}).all()
        row = db.execute(_SUBSCRIBE[db.dialect.name], {"user_id": user_id, "now": utcnow(), **subscription}).one()
        db.execute(_EVICT, {"user_id": user_id, "kept": row.id, "others": cap - 1})
    return row


def unsubscribe(db, user_id, endpoint=None):
    """Remove one of the user's subscriptions, or all of them; returns how many were removed."""
    if endpoint is None:
        return db.execute(_UNSUBSCRIBE_ALL, {"user_id": user_id}).rowcount
    return db.execute(_UNSUBSCRIBE, {"user_id": user_id, "endpoint": endpoint}).rowcount


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
    schema = subscription_schemas[config["PUSH_ALLOW_INSECURE_ENDPOINTS"]]
    row = subscribe(get_db(), g.user_id, json_body(schema), config["PUSH_SUBSCRIPTIONS_PER_USER"])
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
    endpoint = json_body(unsubscribe_schema)["endpoint"] if has_body() else None
    return {"data": {"ok": True, "deleted": unsubscribe(get_db(), g.user_id, endpoint)}}
