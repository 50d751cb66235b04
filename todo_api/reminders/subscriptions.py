"""The caller's Web Push subscriptions: `POST /api/notifications/subscribe` and `DELETE .../unsubscribe`.

One row per endpoint. Subscribing an endpoint again replaces its keys and
gives it to the caller: a browser profile that another user signs in to
pushes that user's reminders from then on.
"""

from flask import Blueprint, current_app, g
from sqlalchemy import DateTime, bindparam, delete

from todo_api.db.connections import get_db, per_dialect
from todo_api.db.tables import push_subscription
from todo_api.openapi.operations import operation, request_body, response
from todo_api.tasks.routes import has_body, json_body, require_session
from todo_api.tasks.schemas import (
    SubscriptionEnvelopeSchema,
    UnsubscribedEnvelopeSchema,
    subscription_schemas,
    unsubscribe_schema,
)
from todo_api.timezones import utcnow

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
_UNSUBSCRIBE_ALL = delete(push_subscription).where(push_subscription.c.user_id == bindparam("user_id"))
_UNSUBSCRIBE = _UNSUBSCRIBE_ALL.where(push_subscription.c.endpoint == bindparam("endpoint"))


def subscribe(db, user_id, subscription):
    """Store a subscription for the user, in one statement; returns its row (without keys)."""
    return db.execute(_SUBSCRIBE[db.dialect.name], {"user_id": user_id, "now": utcnow(), **subscription}).one()


def unsubscribe(db, user_id, endpoint=None):
    """Remove one of the user's subscriptions, or all of them; returns how many were removed."""
    if endpoint is None:
        return db.execute(_UNSUBSCRIBE_ALL, {"user_id": user_id}).rowcount
    return db.execute(_UNSUBSCRIBE, {"user_id": user_id, "endpoint": endpoint}).rowcount


@bp.post("/subscribe")
@operation(
    "Store a Web Push subscription",
    description="The browser's `PushSubscription`: its endpoint and keys. One row per endpoint: subscribing an "
    "endpoint again replaces its keys and gives it to the caller. Reminders are pushed to every subscription of "
    "their user.",
    # The https-only form: what production accepts.
    body=request_body(subscription_schemas[False], "The subscription; unknown fields are ignored."),
    response=response("The stored subscription, without its keys.", SubscriptionEnvelopeSchema),
    tag="notifications",
)
def subscribe_view():
    schema = subscription_schemas[current_app.config["PUSH_ALLOW_INSECURE_ENDPOINTS"]]
    row = subscribe(get_db(), g.user_id, json_body(schema))
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
