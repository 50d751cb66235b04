"""The caller's settings: `GET /api/settings` and `PUT /api/settings`.

The only setting is the time zone (an IANA name, UTC by default) in which due
dates and reminders given without an offset are read.
"""

from flask import Blueprint, g

from todo_api.db.connections import get_db
from todo_api.openapi.operations import operation, request_body, response
from todo_api.tasks import store as task_store
from todo_api.tasks.routes import json_body, require_session
from todo_api.tasks.schemas import SettingsEnvelopeSchema, settings_schema

bp = Blueprint("settings", __name__, url_prefix="/api")
bp.before_request(require_session)


@bp.get("/settings")
@operation(
    "Get the caller's settings",
    description="A user who never saved settings has the defaults (`time_zone`: `UTC`).",
    response=response("The settings.", SettingsEnvelopeSchema),
    tag="settings",
)
def get_settings():
    return {"data": {"time_zone": task_store.time_zone_name_of(get_db(), g.user_id)}}


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
    time_zone = json_body(settings_schema)["time_zone"]
    task_store.change_time_zone(get_db(), g.user_id, time_zone)
    return {"data": {"time_zone": time_zone}}
