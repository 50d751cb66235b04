"""HTTP beyond the routes: no redirect ever points at a host taken from the request."""

import re

import pytest

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
