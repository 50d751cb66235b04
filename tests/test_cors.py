"""CORS: the browser frontend's origin may call the API with credentials; others may not."""

FRONTEND = "http://localhost:3000"


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
