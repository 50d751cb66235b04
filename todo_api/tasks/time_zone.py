"""The caller's settings: `GET /api/settings` and `PUT /api/settings`.

The only setting is the time zone (an IANA name, UTC by default) in which due
dates and reminders given without an offset are read.
"""

from flask import Blueprint, g

from todo_api.auth.sessions import require_session
from todo_api.db.connections import run_retrying_once
from todo_api.http.body import json_body
from todo_api.openapi.operations import operation, request_body, response
from todo_api.tasks import store
from todo_api.tasks.schemas import SettingsEnvelopeSchema, settings_schema

bp = Blueprint("settings", __name__, url_prefix="/api")
require_session(bp)


@bp.get("/settings")
@operation(
    "Get the caller's settings",
    description="A user who never saved settings has the defaults (`time_zone`: `UTC`).",
    response=response("The settings.", SettingsEnvelopeSchema),
    tag="settings",
)
def get_settings():
    caller = g.caller
    return {"data": {"time_zone": run_retrying_once(lambda db: store.time_zone_name_of(db, caller), writes=False)}}


@bp.put("/settings")
@operation(
    "Set the caller's time zone",
    description="Due dates and reminders given without an offset keep their day and time on the wall clock of the "
    "new zone; those given with an offset keep their instant. Reminders show times in it.",
    body=request_body(settings_schema, "The settings; unknown fields are ignored."),
    response=response("The settings as saved.", SettingsEnvelopeSchema),
    tag="settings",
)
def put_settings():
    """Set the time zone; wall-clock tasks keep their day and time in it (their instants move)."""
    time_zone, caller = json_body(settings_schema)["time_zone"], g.caller
    run_retrying_once(lambda db: store.change_time_zone(db, caller, time_zone), writes=True)
    return {"data": {"time_zone": time_zone}}
