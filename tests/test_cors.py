"""CORS: the browser frontend's origin may call the API with credentials; others may not."""

import click
import pytest
from flask.cli import run_command

FRONTEND = "http://localhost:3000"
KEY = "production-key-0123456789abcdef"


def preflight(client, origin):
    return client.options(
        "/api/tasks",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def header_set(value):
    return {item.strip().lower() for item in value.split(",")}


def test_preflight_from_the_frontend_is_allowed_without_a_session(client):
    response = preflight(client, FRONTEND)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "post" in header_set(response.headers["Access-Control-Allow-Methods"])
    assert header_set(response.headers["Access-Control-Allow-Headers"]) == {"authorization", "content-type"}


def test_preflight_from_another_origin_is_not_allowed(client):
    response = preflight(client, "https://evil.example")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_actual_request_from_the_frontend_carries_cors_headers(client, auth):
    response = client.get("/api/tasks", headers={"Origin": FRONTEND, **auth})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


def test_error_responses_carry_cors_headers_too(client):
    """Without them the browser hides the 401 from the frontend, which then cannot send the user to sign in."""
    response = client.get("/api/tasks", headers={"Origin": FRONTEND})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


def test_wildcard_origin_never_allows_credentials(make_app, auth):
    """Any origin may read the API, but no page may make the browser send its cookie."""
    client = make_app(CORS_ORIGINS=["*"]).test_client()
    for response in [preflight(client, FRONTEND), client.get("/api/tasks", headers={"Origin": FRONTEND, **auth})]:
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers


def allowed_origin(client, origin, auth):
    """The Access-Control-Allow-Origin of an authenticated list request from `origin`, or None."""
    response = client.get("/api/tasks", headers={"Origin": origin, **auth})
    assert response.status_code == 200
    return response.headers.get("Access-Control-Allow-Origin")


def test_an_origin_with_regex_characters_is_taken_literally(make_app, auth):
    """`https://*.example.com` is not a pattern: flask-cors alone would have let the attacker's origin in."""
    client = make_app(CORS_ORIGINS=["https://*.example.com"]).test_client()
    assert allowed_origin(client, "https://xexample.com.attacker.net", auth) is None
    assert allowed_origin(client, "https://app.example.com", auth) is None
    assert allowed_origin(client, "https://*.example.com", auth) == "https://*.example.com"
    response = preflight(client, "https://xexample.com.attacker.net")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_literal_origin_matches_whole_and_case_insensitively(make_app, auth):
    client = make_app(CORS_ORIGINS=["https://app.example.com", FRONTEND]).test_client()
    assert allowed_origin(client, "https://app.example.com", auth) == "https://app.example.com"
    assert allowed_origin(client, "HTTPS://APP.EXAMPLE.COM", auth) == "HTTPS://APP.EXAMPLE.COM"
    assert allowed_origin(client, FRONTEND, auth) == FRONTEND
    for origin in ["https://app.example.com.attacker.net", "https://app.example.co", "https://app.example.com:8443"]:
        assert allowed_origin(client, origin, auth) is None
    assert allowed_origin(client, "https://appxexample.com", auth) is None  # `.` is a dot, not any character


def test_a_regex_entry_is_anchored_at_both_ends(make_app, auth):
    client = make_app(CORS_ORIGINS=[r"regex:https://[a-z0-9-]+\.example\.com"]).test_client()
    response = client.get("/api/tasks", headers={"Origin": "https://app.example.com", **auth})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    for origin in [
        "https://app.example.com.attacker.net",
        "https://attacker.net/https://app.example.com",
        "https://a.b.example.com",
        "http://app.example.com",
    ]:
        assert allowed_origin(client, origin, auth) is None


def test_an_alternation_in_a_regex_entry_is_anchored_as_a_whole(make_app, auth):
    client = make_app(CORS_ORIGINS=[r"regex:https://a\.example\.com|https://b\.example\.com"]).test_client()
    assert allowed_origin(client, "https://b.example.com", auth) == "https://b.example.com"
    assert allowed_origin(client, "https://a.example.com.attacker.net", auth) is None
    assert allowed_origin(client, "https://attacker.net#https://b.example.com", auth) is None


def test_an_invalid_regex_entry_stops_the_app_with_the_variable_named(make_app):
    with pytest.raises(RuntimeError, match=r"^CORS_ORIGINS has an invalid pattern 'regex:https://\(': "):
        make_app(CORS_ORIGINS=["regex:https://("])


def test_the_wildcard_still_allows_any_origin(make_app, auth):
    client = make_app(CORS_ORIGINS=["*"]).test_client()
    assert allowed_origin(client, "https://anywhere.example", auth) == "https://anywhere.example"


@pytest.mark.parametrize(
    "entry",
    [
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?",
        "https://app.example.com#top",
        "https://user@app.example.com",
        "https://app.example.com:port",
        "app.example.com",
        "localhost:3000",
        "null",
    ],
)
def test_a_literal_entry_that_is_no_origin_stops_the_app_with_the_variable_named(make_app, entry):
    """A browser's Origin is scheme://host[:port]: an entry with a trailing slash would silently never match."""
    with pytest.raises(RuntimeError) as raised:
        make_app(CORS_ORIGINS=[entry])
    assert str(raised.value) == (
        f"CORS_ORIGINS has an invalid origin {entry!r}: an origin is scheme://host or scheme://host:port, "
        "with nothing after it"
    )


CORS_HEADERS = {
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
}


def cors_headers(response):
    return CORS_HEADERS.intersection(response.headers.keys())


def test_in_production_without_cors_origins_no_origin_is_allowed(make_app, auth):
    """`http://localhost:3000` is the default in development only: in production an unset CORS_ORIGINS lets no
    browser page of another origin read any answer, its own address's pages included."""
    app = make_app(TESTING=False, SECRET_KEY=KEY, CORS_ORIGINS=None)
    assert app.config["CORS_ORIGINS"] == []
    client = app.test_client()
    for origin in [FRONTEND, "https://evil.example"]:
        answers = [
            (preflight(client, origin), 200),
            (client.get("/api/tasks", headers={"Origin": origin, **auth}), 200),
            (client.get("/api/tasks", headers={"Origin": origin}), 401),
            (client.get("/", headers={"Origin": origin}), 200),
        ]
        for response, status in answers:
            assert (response.status_code, cors_headers(response)) == (status, set())


def test_in_development_the_frontends_development_server_is_allowed_by_default(make_app, auth):
    with click.Context(run_command):
        app = make_app(TESTING=False, DEBUG=True, CORS_ORIGINS=None)
    assert app.config["CORS_ORIGINS"] == [FRONTEND]
    response = app.test_client().get("/api/tasks", headers={"Origin": FRONTEND, **auth})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
