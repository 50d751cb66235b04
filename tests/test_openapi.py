"""The OpenAPI document describes exactly the routes the app serves; the docs page works offline."""

import re

import pytest

from todo_api.openapi import operations as apidoc
from todo_api.openapi.document import (
    AUTOMATIC_METHODS,
    DOCS_ENDPOINTS,
    DOCUMENT,
    SWAGGER_UI_DIR,
    build_document,
    openapi_path,
)
from todo_api.tasks import routes as tasks

pytestmark = pytest.mark.backends("sqlite")  # nothing here depends on the database

SINGLE_TASK = "/api/tasks/{task_id}"


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def registered_routes(app):
    """{path: methods} for every route the app registers, in OpenAPI's path syntax."""
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint in DOCS_ENDPOINTS:
            continue
        routes.setdefault(openapi_path(rule), set()).update(method.lower() for method in rule.methods)
    return {path: methods - {method.lower() for method in AUTOMATIC_METHODS} for path, methods in routes.items()}


def documented_routes(document):
    return {
        path: set(operations) - {"parameters", "summary", "description"}
        for path, operations in document["paths"].items()
    }


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_route_is_documented_and_every_documented_route_exists(app, document):
    assert documented_routes(document) == registered_routes(app)


def test_routes_include_every_public_operation(document):
    assert documented_routes(document) == {
        "/": {"get"},
        "/health": {"get"},
        "/health/ready": {"get"},
        "/openapi.json": {"get"},
        "/docs": {"get"},
        "/api/tasks": {"get", "post"},
        "/api/tasks/filter-sort": {"get"},
        "/api/tasks/search": {"get"},
        "/api/tasks/changes": {"get"},
        "/api/tasks/batch": {"post"},
        SINGLE_TASK: {"get", "put", "delete"},
        SINGLE_TASK + "/complete": {"patch"},
        SINGLE_TASK + "/mark-reminder-sent": {"patch"},
        "/api/settings": {"get", "put"},
        "/api/notifications/subscribe": {"post"},
        "/api/notifications/unsubscribe": {"delete"},
    }


def test_document_is_openapi_3_1_without_a_session(client, document):
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "todo-api"
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }


def test_document_is_built_once(app, client):
    first = client.get("/openapi.json").data
    built = app.extensions[DOCUMENT]
    assert client.get("/openapi.json").data == first
    assert app.extensions[DOCUMENT] is built


def test_operation_ids_are_unique(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)) == 20


def test_api_operations_need_a_bearer_session_and_may_be_limited(document):
    for path, method, operation in operations(document):
        if path.startswith("/api/"):
            assert {"bearerAuth": []} in operation["security"], (method, path)
            for status in ("401", "429", "503"):
                assert operation["responses"][status] == {"$ref": f"#/components/responses/{status_name(status)}"}
        else:
            assert "security" not in operation, (method, path)
            assert "401" not in operation["responses"], (method, path)


def status_name(status):
    return {"401": "Unauthorized", "429": "TooManyRequests", "503": "ServiceUnavailable"}[status]


def test_errors_are_documented_where_they_can_happen(document):
    responses = {
        (method.upper(), path): set(operation["responses"]) for path, method, operation in operations(document)
    }
    assert responses[("GET", "/api/tasks")] == {"200", "401", "405", "422", "429", "503"}
    assert responses[("POST", "/api/tasks")] == {"200", "400", "401", "405", "413", "415", "422", "429", "503"}
    assert responses[("GET", SINGLE_TASK)] == {"200", "304", "401", "404", "405", "429", "503"}
    assert responses[("PUT", SINGLE_TASK)] == {
        "200",
        "400",
        "401",
        "404",
        "405",
        "412",
        "413",
        "415",
        "422",
        "429",
        "503",
    }
    assert responses[("DELETE", SINGLE_TASK)] == {"200", "401", "404", "405", "412", "415", "429", "503"}
    assert responses[("PATCH", SINGLE_TASK + "/complete")] == responses[("PUT", SINGLE_TASK)]
    assert responses[("PATCH", SINGLE_TASK + "/mark-reminder-sent")] == responses[("DELETE", SINGLE_TASK)]
    assert responses[("GET", "/api/settings")] == {"200", "401", "405", "429", "503"}
    body_errors = {"200", "400", "401", "405", "413", "415", "422", "429", "503"}
    assert responses[("PUT", "/api/settings")] == body_errors
    assert responses[("POST", "/api/notifications/subscribe")] == body_errors
    assert responses[("DELETE", "/api/notifications/unsubscribe")] == body_errors
    assert responses[("GET", "/health/ready")] == {"200", "405", "503"}
    assert responses[("GET", "/health")] == {"200", "405"}
    assert responses[("GET", "/docs")] == responses[("GET", "/openapi.json")] == {"200", "405", "429"}


def test_error_bodies_share_one_schema(document):
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"]
    assert set(error["properties"]) == {"detail", "errors", "operation"}
    for name, response in document["components"]["responses"].items():
        assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}, name
    limited = document["components"]["responses"]["TooManyRequests"]["headers"]
    assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} == set(limited)


def test_conditional_and_idempotent_requests_are_declared(document):
    if_match = {"$ref": "#/components/parameters/IfMatch"}
    paths = document["paths"]
    for method, path in (
        ("put", SINGLE_TASK),
        ("delete", SINGLE_TASK),
        ("patch", SINGLE_TASK + "/complete"),
        ("patch", SINGLE_TASK + "/mark-reminder-sent"),
    ):
        assert if_match in paths[path][method]["parameters"], (method, path)
    assert if_match not in paths[SINGLE_TASK]["get"]["parameters"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in paths["/api/tasks"]["post"]["parameters"]
    key = document["components"]["parameters"]["IdempotencyKey"]
    assert (key["in"], key["name"], key["required"], key["schema"]["maxLength"]) == (
        "header",
        "Idempotency-Key",
        False,
        255,
    )
    for method, path in (
        ("post", "/api/tasks"),
        ("get", SINGLE_TASK),
        ("put", SINGLE_TASK),
        ("patch", SINGLE_TASK + "/complete"),
        ("patch", SINGLE_TASK + "/mark-reminder-sent"),
    ):
        assert "ETag" in paths[path][method]["responses"]["200"]["headers"], (method, path)


def test_bodies_come_from_the_marshmallow_schemas(document):
    schemas = document["components"]["schemas"]
    create = document["paths"]["/api/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create == {"$ref": "#/components/schemas/TaskCreate"}
    assert schemas["TaskCreate"]["required"] == ["title"]
    assert schemas["TaskCreate"]["properties"]["title"] == {"type": "string", "minLength": 1, "maxLength": 255}
    assert "required" not in schemas["TaskUpdate"]  # partial: only the fields sent change
    assert schemas["TaskUpdate"]["properties"]["completed"] == {"type": "boolean"}
    assert set(schemas["Task"]["required"]) == set(schemas["Task"]["properties"])
    assert schemas["TaskListEnvelope"]["properties"]["next_cursor"]["type"] == "string"
    assert schemas["ChangedTaskEnvelope"]["properties"]["next_task"] == {"$ref": "#/components/schemas/Task"}
    complete = document["paths"][SINGLE_TASK + "/complete"]["patch"]["requestBody"]
    assert complete["required"] is False


def test_settings_and_subscription_bodies_are_described(document):
    schemas = document["components"]["schemas"]
    paths = document["paths"]
    subscribe = paths["/api/notifications/subscribe"]["post"]
    assert subscribe["requestBody"]["required"] is True
    subscription = schemas["Subscription"]
    assert subscription["required"] == ["auth", "endpoint", "p256dh"]
    assert subscription["properties"]["endpoint"]["maxLength"] == 2048
    output = schemas["SubscriptionOutput"]
    assert set(output["properties"]) == set(output["required"]) == {"id", "endpoint", "created_at", "updated_at"}
    unsubscribe = paths["/api/notifications/unsubscribe"]["delete"]["requestBody"]
    assert unsubscribe["required"] is False
    assert schemas["Unsubscribed"]["required"] == ["deleted", "ok"]
    assert schemas["Settings"]["required"] == ["time_zone"]
    assert paths["/api/settings"]["put"]["tags"] == ["settings"]
    assert subscribe["tags"] == ["notifications"]


def test_list_parameters_come_from_the_query_schema(document):
    parameters = {p["name"]: p for p in document["paths"]["/api/tasks"]["get"]["parameters"]}
    assert set(parameters) == {
        "status",
        "priority",
        "category",
        "tags",
        "q",
        "due_before",
        "due_after",
        "overdue",
        "reminder_due",
        "sort_by",
        "sort_order",
        "limit",
        "cursor",
    }
    assert (parameters["priority"]["style"], parameters["priority"]["explode"]) == ("form", False)
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 200}
    search = {p["name"]: p for p in document["paths"]["/api/tasks/search"]["get"]["parameters"]}
    assert search["keyword"]["required"] is True
    assert "q" not in search


def test_docs_page_serves_swagger_ui_from_the_app(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from elsewhere
    assert '"/openapi.json"' in html
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", html)
    assert sorted(assets) == [
        "/docs/favicon-32x32.png",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui-standalone-preset.js",
        "/docs/swagger-ui.css",
    ]
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.data) > 500, asset


def test_docs_assets_are_swagger_ui_5(client):
    """OpenAPI 3.1 needs Swagger UI 5 or later."""
    with open(f"{SWAGGER_UI_DIR}/VERSION") as version:
        assert version.read().strip().startswith("v5.")
    response = client.get("/docs/swagger-ui-bundle.js")
    assert response.mimetype in ("text/javascript", "application/javascript")


@pytest.mark.parametrize("path", ["/docs/../__init__.py", "/docs/%2e%2e/openapi.py", "/docs/missing.js"])
def test_docs_serve_nothing_else(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/json"


NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually please check your spelling and "
    "try again."
)
DOCS_PATHS = ["/docs", "/docs/swagger-ui-bundle.js", "/openapi.json"]


def test_docs_can_be_turned_off(make_app, auth):
    client = make_app(DOCS_ENABLED=False).test_client()
    for path in DOCS_PATHS:
        response = client.get(path)
        assert (response.status_code, response.get_json()) == (404, {"detail": NOT_FOUND}), path
    assert client.get("/api/tasks", headers=auth).get_json() == {"data": []}


def test_docs_have_a_tighter_limit_per_address_shared_by_the_page_its_files_and_the_document(make_app, auth):
    client = make_app(RATELIMIT_DOCS="3 per minute").test_client()
    assert [client.get(path).status_code for path in DOCS_PATHS] == [200, 200, 200]
    for path in DOCS_PATHS:
        refused = client.get(path)
        assert (refused.status_code, refused.get_json()) == (
            429,
            {"detail": "Rate limit exceeded: 3 per 1 minute per client address on the documentation"},
        )
        assert 1 <= int(refused.headers["Retry-After"]) <= 61
    # The rest of the service, and the docs from another address, are not held back.
    assert client.get("/api/tasks", headers=auth).status_code == 200
    assert client.get("/health/ready").status_code == 200
    assert client.get("/docs", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200


def test_the_docs_limit_is_sixty_a_minute_by_default(client):
    statuses = [client.get("/docs/swagger-ui.css").status_code for _ in range(61)]
    assert statuses == [200] * 60 + [429]


def test_the_operation_is_declared_on_the_view_function_itself(app):
    view = app.view_functions["tasks.get_task"]
    assert view is tasks.get_task  # the decorator wraps nothing: the view runs as it is written
    declared = apidoc.operation_of(view)
    assert (declared.summary, declared.errors, declared.conditional) == ("Get a task", (404,), True)


def test_a_route_without_an_operation_is_left_out_and_the_route_test_sees_it(make_app):
    app = make_app()
    app.add_url_rule("/undescribed", "undescribed", lambda: "")
    assert "/undescribed" not in app.test_client().get("/openapi.json").get_json()["paths"]
    assert registered_routes(app)["/undescribed"] == {"get"}


def test_a_path_argument_without_a_parameter_cannot_be_documented(make_app):
    app = make_app()
    thing = apidoc.response("The thing.", {"type": "object"})
    view = apidoc.operation("Get a thing", response=thing)(lambda thing_id: "")
    app.add_url_rule("/things/<int:thing_id>", "thing", view)
    with pytest.raises(LookupError, match=r"/things/<int:thing_id>: no parameter .* describes <thing_id>"):
        build_document(app)
