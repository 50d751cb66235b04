"""Authentication: Better Auth sessions, in every form a client may hold them."""

import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import click
import pytest
from flask.cli import run_command
from sqlalchemy import text

from support import SECRET, base_config, delete_session, expire_session
from todo_api import create_app
from todo_api.auth.credentials import sign
from todo_api.db.connections import get_engine
from todo_api.mode import Mode, get_mode

API_ROUTES = [
    ("GET", "/api/tasks"),
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks/1"),
    ("PUT", "/api/tasks/1"),
    ("DELETE", "/api/tasks/1"),
    ("PATCH", "/api/tasks/1/complete"),
]
NOT_AUTHENTICATED = {"detail": "Not authenticated"}


def signed(token, secret=SECRET):
    return f"{token}.{sign(token, secret)}"


def assert_401(response):
    assert response.status_code == 401
    assert response.get_json() == NOT_AUTHENTICATED
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
def test_every_api_route_requires_a_session(client, method, path):
    body = {"title": "x"} if method in ("POST", "PUT") else None
    assert_401(client.open(path, method=method, json=body))


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Bearer    ", "Token {token}", "Basic {token}", "{token}", "malformed_header"],
)
def test_malformed_authorization_header_is_401(client, token, header):
    assert_401(client.get("/api/tasks", headers={"Authorization": header.format(token=token)}))


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(client, token, scheme):
    response = client.get("/api/tasks", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200


def test_unknown_token_is_401(client, token):
    assert_401(client.get("/api/tasks", headers={"Authorization": "Bearer " + "x" * 32}))


def test_expired_session_is_401(app, client, token, auth):
    assert client.get("/api/tasks", headers=auth).status_code == 200
    expire_session(app, token)
    assert_401(client.get("/api/tasks", headers=auth))


def test_session_created_already_expired_is_401(client, new_session):
    stale = new_session("old@example.com", lifetime=timedelta(seconds=-5))
    assert_401(client.get("/api/tasks", headers={"Authorization": f"Bearer {stale}"}))


def test_signed_out_session_is_refused_on_the_very_next_request(app, client, token, auth):
    assert client.get("/api/tasks", headers=auth).status_code == 200
    delete_session(app, token)
    assert_401(client.get("/api/tasks", headers=auth))


def better_auth_sqlite_time(moment, form):
    """`expiresAt` as Better Auth writes it on SQLite: its Kysely adapter stores `Date.toISOString()` (Better Auth
    1.x); an integer of milliseconds since 1970 is what a `timestamp_ms` column of its Drizzle schema holds."""
    if form == "iso":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if form == "milliseconds":
        return int(moment.timestamp() * 1000)
    return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")  # SQLAlchemy's own text


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("form", ["iso", "milliseconds", "sqlalchemy"])
def test_sqlite_expiry_is_compared_as_time_in_every_form_better_auth_stores(app, client, token, auth, form):
    """A text comparison would keep an ISO `...T...Z` session alive until the end of its day."""
    now = datetime.now(UTC)
    statement = text('UPDATE "session" SET "expiresAt" = :expires WHERE token = :token')
    with get_engine(app).begin() as connection:
        connection.execute(
            statement, {"expires": better_auth_sqlite_time(now + timedelta(minutes=1), form), "token": token}
        )
    assert client.get("/api/tasks", headers=auth).status_code == 200
    with get_engine(app).begin() as connection:
        connection.execute(
            statement, {"expires": better_auth_sqlite_time(now - timedelta(minutes=1), form), "token": token}
        )
    assert_401(client.get("/api/tasks", headers=auth))


@pytest.mark.parametrize("hostile", ["%00abc", "abc\tdef", "é" * 40, "x" * 600, "%", "%zz", "."])
def test_hostile_tokens_are_401_not_500(client, hostile):
    assert_401(client.get("/api/tasks", headers={"Authorization": f"Bearer {quote(hostile, safe='%.')}"}))


# -- The signed form from Better Auth's bearer plugin and cookie ---------------


@pytest.fixture
def secret_app(make_app):
    return make_app(BETTER_AUTH_SECRET=SECRET)


@pytest.fixture
def secret_client(secret_app):
    return secret_app.test_client()


@pytest.fixture
def secret_token(secret_app):
    from todo_api.cli import create_user_session
    from todo_api.db.connections import get_engine

    with get_engine(secret_app).begin() as connection:
        return create_user_session(connection, secret_app.config, "signed@example.com")


def test_signature_matches_better_auth_format(secret_token):
    signature = sign(secret_token, SECRET)
    assert len(signature) == 44
    assert signature.endswith("=")


@pytest.mark.parametrize("encode", [lambda v: v, lambda v: quote(v, safe="")], ids=["plain", "url-encoded"])
def test_signed_token_with_the_right_secret_is_accepted(secret_client, secret_token, encode):
    response = secret_client.get("/api/tasks", headers={"Authorization": f"Bearer {encode(signed(secret_token))}"})
    assert response.status_code == 200


def test_raw_token_is_accepted_when_a_secret_is_set(secret_client, secret_token):
    assert secret_client.get("/api/tasks", headers={"Authorization": f"Bearer {secret_token}"}).status_code == 200


@pytest.mark.parametrize(
    "credential",
    [
        lambda t: f"{t}.{sign(t, 'another-secret')}",
        lambda t: f"{t}.{sign(t + 'x', SECRET)}",
        lambda t: f"{t}.{sign(t, SECRET)[:-2]}",
        lambda t: f"{t}.",
        lambda t: f"{t}.not-a-signature",
    ],
    ids=["wrong-secret", "signature-of-another-token", "truncated", "empty", "garbage"],
)
def test_bad_signature_is_401(secret_client, secret_token, credential):
    assert_401(secret_client.get("/api/tasks", headers={"Authorization": f"Bearer {credential(secret_token)}"}))


def test_signed_token_without_a_configured_secret_uses_the_token_part(client, token):
    response = client.get("/api/tasks", headers={"Authorization": f"Bearer {signed(token, 'whatever')}"})
    assert response.status_code == 200


PRODUCTION_KEY = "production-key-0123456789abcdef"
# Signed forms of a token, each with a signature of the wrong secret or none at all; and Better Auth's own.
WRONGLY_SIGNED = {
    "another-secrets": lambda t: f"{t}.{sign(t, 'whatever')}",
    "garbage": lambda t: f"{t}.anything",
    "empty": lambda t: f"{t}.",
}
UNCHECKED_SIGNATURES = [*WRONGLY_SIGNED.values(), lambda t: quote(signed(t), safe="")]
UNCHECKED_IDS = [*WRONGLY_SIGNED, "better-auths-url-encoded"]


@pytest.mark.parametrize("credential", UNCHECKED_SIGNATURES, ids=UNCHECKED_IDS)
@pytest.mark.parametrize("debug", [False, True], ids=["production", "production-with-flask-debug"])
def test_in_production_a_signature_nothing_can_check_is_refused(make_app, token, monkeypatch, credential, debug):
    """Without BETTER_AUTH_SECRET, `<token>.<anything>` would be the raw token with a signature nobody checked:
    refused, even with FLASK_DEBUG set (gunicorn with FLASK_DEBUG is production all the same). The raw token
    itself is Better Auth's credential too, and is accepted."""
    if debug:
        monkeypatch.setenv("FLASK_DEBUG", "1")
    app = make_app(TESTING=False, SECRET_KEY=PRODUCTION_KEY)
    assert (app.debug, get_mode(app)) == (debug, Mode.PRODUCTION)
    client = app.test_client()
    assert_401(client.get("/api/tasks", headers={"Authorization": f"Bearer {credential(token)}"}))
    response = client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.get_json()) == (200, {"data": []})


def test_in_production_with_the_secret_signatures_are_checked(make_app, token):
    client = make_app(TESTING=False, BETTER_AUTH_SECRET=SECRET).test_client()
    response = client.get("/api/tasks", headers={"Authorization": f"Bearer {signed(token)}"})
    assert (response.status_code, response.get_json()) == (200, {"data": []})
    for credential in WRONGLY_SIGNED.values():
        assert_401(client.get("/api/tasks", headers={"Authorization": f"Bearer {credential(token)}"}))


@pytest.mark.parametrize("credential", UNCHECKED_SIGNATURES, ids=UNCHECKED_IDS)
def test_the_development_server_looks_up_the_token_part_without_a_secret(make_app, token, credential):
    with click.Context(run_command):
        app = make_app(TESTING=False, DEBUG=True)
    assert get_mode(app) is Mode.DEVELOPMENT
    response = app.test_client().get("/api/tasks", headers={"Authorization": f"Bearer {credential(token)}"})
    assert (response.status_code, response.get_json()) == (200, {"data": []})


@pytest.mark.parametrize("name", ["better-auth.session_token", "__Secure-better-auth.session_token"])
def test_session_cookie_is_accepted(secret_client, secret_token, name):
    secret_client.set_cookie(name, quote(signed(secret_token), safe=""))
    assert secret_client.get("/api/tasks").status_code == 200


def test_cookie_prefix_is_configurable(make_app):
    app = make_app(BETTER_AUTH_SECRET=SECRET, BETTER_AUTH_COOKIE_PREFIX="todo")
    from todo_api.cli import create_user_session
    from todo_api.db.connections import get_engine

    with get_engine(app).begin() as connection:
        token = create_user_session(connection, app.config, "prefix@example.com")
    client = app.test_client()
    client.set_cookie("todo.session_token", signed(token))
    assert client.get("/api/tasks").status_code == 200
    client.delete_cookie("todo.session_token")
    client.set_cookie("better-auth.session_token", signed(token))
    assert_401(client.get("/api/tasks"))


def test_cookie_needs_a_configured_secret(client, token):
    client.set_cookie("better-auth.session_token", signed(token, SECRET))
    assert_401(client.get("/api/tasks"))


@pytest.mark.parametrize("value", ["{token}", "{token}.{bad}"], ids=["unsigned", "bad-signature"])
def test_cookie_must_carry_a_valid_signature(secret_client, secret_token, value):
    secret_client.set_cookie("better-auth.session_token", value.format(token=secret_token, bad="A" * 43 + "="))
    assert_401(secret_client.get("/api/tasks"))


def test_authorization_header_takes_precedence_over_the_cookie(secret_client, secret_token):
    secret_client.set_cookie("better-auth.session_token", signed(secret_token))
    assert_401(secret_client.get("/api/tasks", headers={"Authorization": "Bearer unknown"}))


def test_cookie_writes_must_be_json(secret_client, secret_token):
    """A cross-site form can carry the cookie but cannot send application/json."""
    secret_client.set_cookie("better-auth.session_token", signed(secret_token))
    created = secret_client.post("/api/tasks", json={"title": "by cookie"})
    assert created.status_code == 200
    task_id = created.get_json()["data"]["id"]

    forged = secret_client.post("/api/tasks", data={"title": "forged"})
    assert forged.status_code == 415
    assert forged.get_json()["detail"] == (
        "Requests authenticated by cookie that change data must be sent as application/json"
    )
    assert secret_client.delete(f"/api/tasks/{task_id}").status_code == 415
    assert secret_client.patch(f"/api/tasks/{task_id}/complete").status_code == 415
    listed = secret_client.get("/api/tasks").get_json()["data"]
    assert [(t["id"], t["completed"]) for t in listed] == [(task_id, False)]

    deleted = secret_client.delete(f"/api/tasks/{task_id}", headers={"Content-Type": "application/json"})
    assert deleted.status_code == 200


def test_bearer_writes_need_no_json_content_type(client, auth, create_task):
    task = create_task()
    assert client.delete(f"/api/tasks/{task['id']}", headers=auth).status_code == 200


# -- Failures and logs ------------------------------------------------------------


def test_database_down_during_authentication_is_503_not_401():
    app = create_app(base_config("postgresql://postgres@127.0.0.1:1/nowhere", DATABASE_CONNECT_TIMEOUT=1))
    client = app.test_client()
    response = client.get("/api/tasks", headers={"Authorization": "Bearer " + "a" * 32})
    assert response.status_code == 503
    assert response.get_json() == {"detail": "Service temporarily unavailable"}
    assert response.headers["Retry-After"] == "5"
    assert client.get("/health").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.get_json() == {"detail": "Service temporarily unavailable"}


def test_no_token_reaches_the_logs(secret_client, secret_token, caplog):
    caplog.set_level(logging.DEBUG)
    credentials = [secret_token, signed(secret_token), "y" * 32, signed("z" * 32)]
    for credential in credentials:
        secret_client.get("/api/tasks", headers={"Authorization": f"Bearer {credential}"})
    secret_client.set_cookie("better-auth.session_token", signed(secret_token))
    secret_client.post("/api/tasks", data="x")
    assert "rejected request" in caplog.text
    for secret_value in [secret_token, "y" * 32, "z" * 32, sign(secret_token, SECRET)]:
        assert secret_value[:6] not in caplog.text
