"""User settings: `GET` and `PUT /api/settings`, the time zone reminders are shown in."""

import json

import pytest
from sqlalchemy import func, select

from todo_api.db.connections import get_engine
from todo_api.db.tables import user_settings


def stored_rows(app):
    with get_engine(app).connect() as connection:
        return connection.execute(select(user_settings.c.user_id, user_settings.c.time_zone)).all()


def test_a_user_without_settings_has_utc(client, auth, app):
    response = client.get("/api/settings", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"data": {"time_zone": "UTC"}})
    assert stored_rows(app) == []


def test_put_stores_the_time_zone_and_get_shows_it(client, auth):
    response = client.put("/api/settings", headers=auth, json={"time_zone": "Europe/Berlin"})
    assert (response.status_code, response.get_json()) == (200, {"data": {"time_zone": "Europe/Berlin"}})
    assert client.get("/api/settings", headers=auth).get_json() == {"data": {"time_zone": "Europe/Berlin"}}


def test_put_again_changes_the_one_row(client, auth, app):
    client.put("/api/settings", headers=auth, json={"time_zone": "Europe/Berlin"})
    response = client.put("/api/settings", headers=auth, json={"time_zone": "America/New_York", "theme": "dark"})
    assert response.get_json() == {"data": {"time_zone": "America/New_York"}}
    assert [row.time_zone for row in stored_rows(app)] == ["America/New_York"]


def test_settings_are_per_user(client, auth, other_auth):
    client.put("/api/settings", headers=auth, json={"time_zone": "Asia/Tokyo"})
    assert client.get("/api/settings", headers=other_auth).get_json() == {"data": {"time_zone": "UTC"}}


def test_the_frontends_request_shape_works(client, token):
    """As lib/api.ts sends every request: JSON content type always, bearer token, a JSON.stringify'd body."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    response = client.put("/api/settings", headers=headers, data=json.dumps({"time_zone": "Australia/Sydney"}))
    assert response.get_json() == {"data": {"time_zone": "Australia/Sydney"}}
    response = client.get("/api/settings", headers=headers)
    assert response.get_json() == {"data": {"time_zone": "Australia/Sydney"}}


@pytest.mark.parametrize(
    "time_zone",
    ["Mars/Olympus_Mons", "europe/berlin", "Europe/Berlin ", "", "localtime", "../etc/passwd", "+02:00", "Factory"],
)
def test_an_unknown_time_zone_is_422_and_changes_nothing(client, auth, app, time_zone):
    client.put("/api/settings", headers=auth, json={"time_zone": "Europe/Paris"})
    response = client.put("/api/settings", headers=auth, json={"time_zone": time_zone})
    assert response.status_code == 422
    assert response.get_json() == {
        "detail": "Validation failed",
        "errors": {"time_zone": ["Must be an IANA time zone name, such as Europe/Berlin or UTC."]},
    }
    assert [row.time_zone for row in stored_rows(app)] == ["Europe/Paris"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing data for required field."),
        ({"time_zone": None}, "Field may not be null."),
        ({"time_zone": 2}, "Not a valid string."),
    ],
)
def test_a_missing_or_mistyped_time_zone_is_422(client, auth, app, body, message):
    response = client.put("/api/settings", headers=auth, json=body)
    assert (response.status_code, response.get_json()) == (
        422,
        {"detail": "Validation failed", "errors": {"time_zone": [message]}},
    )
    assert stored_rows(app) == []


def test_settings_need_a_session(client, app):
    assert client.get("/api/settings").status_code == 401
    response = client.put("/api/settings", json={"time_zone": "Europe/Berlin"})
    assert (response.status_code, response.get_json()) == (401, {"detail": "Not authenticated"})
    with get_engine(app).connect() as connection:
        assert connection.execute(select(func.count()).select_from(user_settings)).scalar() == 0


def test_a_body_that_is_not_json_is_refused(client, auth):
    response = client.put("/api/settings", headers=auth, data="time_zone=UTC")
    assert response.status_code == 415
    response = client.put("/api/settings", headers={**auth, "Content-Type": "application/json"}, data="{")
    assert response.status_code == 400
