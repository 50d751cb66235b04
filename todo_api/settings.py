"""The caller's settings: `GET` and `PUT /api/settings` (the time zone reminders are shown in)."""

from flask import Blueprint, g
from sqlalchemy import DateTime, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from .database import get_db
from .models import user_settings, utcnow
from .schemas import settings_schema
from .tasks import json_body, require_session

DEFAULTS = {"time_zone": "UTC"}

bp = Blueprint("settings", __name__, url_prefix="/api")
bp.before_request(require_session)

_SELECT = select(user_settings.c.time_zone).where(user_settings.c.user_id == bindparam("user_id"))


def _upsert(insert):
    statement = insert(user_settings).values(
        user_id=bindparam("user_id"),
        time_zone=bindparam("time_zone"),
        updated_at=bindparam("now", type_=DateTime),
    )
    return statement.on_conflict_do_update(
        index_elements=[user_settings.c.user_id],
        set_={"time_zone": statement.excluded.time_zone, "updated_at": statement.excluded.updated_at},
    ).returning(user_settings.c.time_zone)


# One statement: the row is created or changed in place, so two writes at once cannot collide.
_UPSERT = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}


def settings_of(db, user_id):
    time_zone = db.execute(_SELECT, {"user_id": user_id}).scalar()
    return DEFAULTS if time_zone is None else {"time_zone": time_zone}


def save_settings(db, user_id, settings):
    statement = _UPSERT[db.dialect.name]
    time_zone = db.execute(statement, {"user_id": user_id, "now": utcnow(), **settings}).scalar_one()
    return {"time_zone": time_zone}


@bp.get("/settings")
def get_settings():
    return {"data": settings_of(get_db(), g.user_id)}


@bp.put("/settings")
def put_settings():
    return {"data": save_settings(get_db(), g.user_id, json_body(settings_schema))}
