"""HTTP beyond the routes: no redirect ever points at a host taken from the request."""

import re

import pytest
from flask import request

NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually please check your spelling and "
    "try again."
)
EVIL_HOST = {"Host": "evil.example"}


def get_raw(client, path, headers=None):
    """GET with this exact path: the test client would read `//api/tasks` as host `api`, path `/tasks`."""
    return client.get("/", environ_overrides={"PATH_INFO": path}, headers={**EVIL_HOST, **(headers or {})})


@pytest.mark.parametrize("path", ["/api//tasks", "/api/tasks//1", "/docs//swagger-ui.css", "/api/tasks/", "/health/"])
def test_a_path_werkzeug_would_redirect_is_a_plain_404(client, auth, path):
    response = get_raw(client, path, auth)
    assert (response.status_code, response.get_json()) == (404, {"detail": NOT_FOUND})
    assert "Location" not in response.headers


def test_leading_slashes_are_ignored_without_a_redirect(client, auth, create_task):
    """Werkzeug matches `//api/tasks` as `/api/tasks`: answered in place, never sent elsewhere."""
    task = create_task()
    response = get_raw(client, "//api/tasks")
    assert (response.status_code, "Location" in response.headers) == (401, False)
    response = get_raw(client, "//api/tasks", auth)
    assert (response.status_code, response.get_json(), "Location" in response.headers) == (200, {"data": [task]}, False)


def sample_path(rule):
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda match: "1" if match[1] == "task_id" else "swagger-ui.css", rule)


def slash_variants(path):
    """The path with a slash added at the end, dropped from the end, and doubled at each slash."""
    doubled = [path[:i] + "/" + path[i:] for i, char in enumerate(path) if char == "/"]
    return [path + "/", path.rstrip("/") or "/", *doubled]


def test_no_route_redirects_with_a_slash_added_doubled_or_dropped(app, client, auth):
    """Every route and method, so that a route added later cannot bring the redirect back."""
    for rule in app.url_map.iter_rules():
        for path in slash_variants(sample_path(rule.rule)):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                environ = {"PATH_INFO": path}
                response = client.open("/", method=method, environ_overrides=environ, headers={**EVIL_HOST, **auth})
                assert (response.status_code // 100 == 3, response.headers.get("Location")) == (False, None), path


API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Vary": "Origin"}


def protective(response):
    return {name: response.headers.get(name) for name in API_HEADERS}


@pytest.mark.parametrize("origin", [None, "http://localhost:3000", "https://evil.example"])
def test_every_api_answer_is_no_store_nosniff_and_varies_by_origin(client, auth, create_task, origin):
    task = create_task()
    with_origin = {"Origin": origin} if origin else {}
    answers = {
        200: client.get("/api/tasks", headers={**auth, **with_origin}),
        304: client.get(f"/api/tasks/{task['id']}", headers={**auth, **with_origin, "If-None-Match": "*"}),
        401: client.get("/api/tasks", headers=with_origin),
        404: client.get("/api/tasks/999999", headers={**auth, **with_origin}),
        405: client.delete("/api/tasks", headers={**auth, **with_origin}),
        422: client.get("/api/tasks?limit=0", headers={**auth, **with_origin}),
    }
    for status, response in answers.items():
        assert (response.status_code, protective(response)) == (status, API_HEADERS)
        assert len(response.headers.getlist("Vary")) == 1


def test_an_unknown_api_path_is_no_store_too(client):
    response = client.get("/api/nope")
    assert (response.status_code, protective(response)) == (404, API_HEADERS)


@pytest.mark.parametrize(
    ("path", "status", "cache_control"),
    [
        ("/", 200, None),
        ("/health", 200, None),
        ("/openapi.json", 200, None),
        ("/docs", 200, None),
        ("/docs/swagger-ui.css", 200, "public, max-age=86400"),
        ("/nope", 404, None),
    ],
)
def test_every_other_answer_is_nosniff_and_varies_by_origin_and_keeps_its_caching(client, path, status, cache_control):
    response = client.get(path, headers={"Origin": "http://localhost:3000"})
    assert (response.status_code, response.headers.get("Cache-Control")) == (status, cache_control)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers.getlist("Vary") == ["Origin"]


# -- Client addresses behind a platform's router ------------------------------------------------------------------

# Every request reaches a web process on Heroku or Render from the platform's router. (Addresses are only written
# into the WSGI environ and headers here: nothing connects to them.)
ROUTER = "10.1.2.3"
PLATFORMS = {"DYNO": "web.1", "RENDER": "true"}
CLIENTS = [f"198.51.100.{number}" for number in range(1, 6)]


@pytest.fixture
def platform(monkeypatch):
    """`platform(variable)`: the environment as Heroku (DYNO) or Render (RENDER) sets it; None: neither."""

    def set_platform(variable):
        for name in [*PLATFORMS, "TRUSTED_PROXY_HOPS"]:
            monkeypatch.delenv(name, raising=False)
        if variable is not None:
            monkeypatch.setenv(variable, PLATFORMS[variable])

    return set_platform


def through_router(client, path, client_address, sent=None):
    """A request as the router hands it over: from the router's address, the client's own address appended to
    X-Forwarded-For, after whatever the client sent in that header (`sent`)."""
    forwarded = f"{sent}, {client_address}" if sent else client_address
    return client.get(path, headers={"X-Forwarded-For": forwarded}, environ_base={"REMOTE_ADDR": ROUTER})


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("variable", list(PLATFORMS))
def test_behind_heroku_or_renders_router_the_client_is_the_address_it_appended(make_app, platform, variable):
    platform(variable)
    app = make_app()
    app.add_url_rule("/address", "address", lambda: {"address": request.remote_addr})
    client = app.test_client()
    for sent in [None, "203.0.113.9", "203.0.113.9, 192.0.2.1", "unknown"]:
        response = through_router(client, "/address", CLIENTS[0], sent)
        assert (response.status_code, response.get_json()) == (200, {"address": CLIENTS[0]})


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("variable", list(PLATFORMS))
def test_behind_the_router_each_client_has_its_own_address_budget(make_app, platform, variable):
    """The issue's case: with one address for everyone behind the router, its budget was everyone's."""
    platform(variable)
    client = make_app(RATELIMIT_PER_IP="3 per minute").test_client()
    statuses = [through_router(client, "/", address).status_code for address in CLIENTS for _ in range(3)]
    assert statuses == [200] * 15
    # A client past its budget is refused, whatever it writes into X-Forwarded-For; a new one is not.
    assert through_router(client, "/", CLIENTS[0]).status_code == 429
    assert through_router(client, "/", CLIENTS[0], sent=CLIENTS[4]).status_code == 429
    assert through_router(client, "/", "198.51.100.99").status_code == 200


@pytest.mark.backends("sqlite")
def test_elsewhere_the_header_is_ignored_unless_trusted_proxy_hops_says_so(make_app, platform):
    """Without the platform's variable the connection's address counts: anyone can send X-Forwarded-For."""
    platform(None)
    client = make_app(RATELIMIT_PER_IP="3 per minute").test_client()
    statuses = [through_router(client, "/", address).status_code for address in CLIENTS for _ in range(3)]
    assert statuses == [200] * 3 + [429] * 12
