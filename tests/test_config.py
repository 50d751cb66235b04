"""Configuration: database URLs, environment variables and the .env file."""

import os
import runpy

import pytest
from itsdangerous import URLSafeSerializer

from todo_api import DEVELOPMENT_SECRET, create_app, listing
from todo_api.config import from_environment
from todo_api.database import get_engine, normalize_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db.example:5432/todo", "postgresql+psycopg2://u:p@db.example:5432/todo"),
        ("postgresql://u:p@db.example/todo", "postgresql+psycopg2://u:p@db.example/todo"),
        ("postgresql+psycopg2://u@db.example/todo", "postgresql+psycopg2://u@db.example/todo"),
        ("sqlite:///x", "sqlite:///x"),
    ],
)
def test_database_urls_are_normalized_to_psycopg2(url, expected):
    assert normalize_url(url).render_as_string(hide_password=False) == expected


def test_without_a_database_url_sqlite_lives_in_the_instance_folder():
    app = create_app(test_config={"DATABASE_URL": None, "TESTING": True})
    engine = get_engine(app)
    try:
        assert engine.dialect.name == "sqlite"
        assert engine.url.database == os.path.join(app.instance_path, "todo.sqlite")
    finally:
        engine.dispose()


def test_settings_are_read_from_environment_variables(monkeypatch):
    monkeypatch.setenv("DATABASE_POOL_SIZE", "12")
    monkeypatch.setenv("CORS_ORIGINS", "a, b")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    config = from_environment()
    assert (config["DATABASE_POOL_SIZE"], config["CORS_ORIGINS"], config["LOG_LEVEL"]) == (12, ["a", "b"], "DEBUG")


def test_docs_are_served_unless_turned_off(monkeypatch):
    monkeypatch.delenv("DOCS_ENABLED", raising=False)
    assert from_environment()["DOCS_ENABLED"] is True
    monkeypatch.setenv("DOCS_ENABLED", "false")
    assert from_environment()["DOCS_ENABLED"] is False
    monkeypatch.setenv("DOCS_ENABLED", "sometimes")
    with pytest.raises(RuntimeError, match="^DOCS_ENABLED must be true or false, got 'sometimes'$"):
        from_environment()


def test_an_invalid_integer_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("DATABASE_POOL_SIZE", "many")
    with pytest.raises(RuntimeError, match="DATABASE_POOL_SIZE"):
        from_environment()


@pytest.fixture
def app_in(monkeypatch, tmp_path):
    """`app_in(directory)`: an app created with `directory` as the working directory."""
    apps = []

    def create(directory):
        monkeypatch.chdir(directory)
        apps.append(create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'todo.sqlite'}"}))
        return apps[-1]

    yield create
    for app in apps:
        get_engine(app).dispose()


@pytest.fixture
def unset_after(monkeypatch):
    """Unset these variables after the test: load_dotenv sets them, and monkeypatch restores only what it changed."""
    names = ["CORS_ORIGINS"]
    for name in names:
        monkeypatch.delenv(name, raising=False)
    yield
    for name in names:
        os.environ.pop(name, None)


def test_a_dotenv_file_in_the_working_directory_is_read(app_in, tmp_path, unset_after):
    (tmp_path / ".env").write_text("CORS_ORIGINS=https://from-dotenv.example\n")
    assert app_in(tmp_path).config["CORS_ORIGINS"] == ["https://from-dotenv.example"]


def test_a_dotenv_file_in_a_parent_directory_is_not_read(app_in, tmp_path, unset_after):
    (tmp_path / ".env").write_text("CORS_ORIGINS=https://from-a-parent.example\n")
    working = tmp_path / "project" / "instance"
    working.mkdir(parents=True)
    assert app_in(working).config["CORS_ORIGINS"] == ["http://localhost:3000"]
    assert "CORS_ORIGINS" not in os.environ


KEY = "production-key-0123456789abcdef"
DEVELOPMENT_WARNING = (
    "SECRET_KEY and BETTER_AUTH_SECRET are unset: page cursors are signed with a public development secret"
)


@pytest.fixture
def no_secret(monkeypatch, tmp_path):
    """No secret and no FLASK_DEBUG in the environment, and no .env to bring them back."""
    for name in ["SECRET_KEY", "BETTER_AUTH_SECRET", "FLASK_DEBUG"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'todo.sqlite'}")


def development_warnings(caplog):
    return [record.getMessage() for record in caplog.records if record.name == "todo_api"]


def test_production_without_a_secret_refuses_to_start(no_secret):
    """wsgi.py is what gunicorn loads."""
    with pytest.raises(RuntimeError, match=r"^SECRET_KEY or BETTER_AUTH_SECRET must be set: page cursors are signed"):
        runpy.run_path(os.path.join(REPO, "wsgi.py"))


def test_development_mode_without_a_secret_starts_with_a_warning(no_secret, monkeypatch, caplog):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app()
    get_engine(app).dispose()
    assert app.debug is True
    assert development_warnings(caplog) == [DEVELOPMENT_WARNING]


@pytest.mark.parametrize("variable", ["SECRET_KEY", "BETTER_AUTH_SECRET"])
def test_production_signs_cursors_with_the_secret_it_is_given(no_secret, make_app, auth, caplog, variable):
    client = make_app(TESTING=False, **{variable: KEY}).test_client()
    assert development_warnings(caplog) == []
    for title in ["a", "b"]:
        assert client.post("/api/tasks", json={"title": title}, headers=auth).status_code == 200
    cursor = client.get("/api/tasks?limit=1", headers=auth).get_json()["next_cursor"]
    assert URLSafeSerializer(KEY, salt=listing.CURSOR_SALT).loads(cursor)[0] == "created_at"
    rest = client.get(f"/api/tasks?cursor={cursor}", headers=auth).get_json()
    assert [task["title"] for task in rest["data"]] == ["a"]
    public = URLSafeSerializer(DEVELOPMENT_SECRET, salt=listing.CURSOR_SALT).dumps(
        ["created_at", True, "9998-01-01T00:00:00", 1]
    )
    response = client.get(f"/api/tasks?cursor={public}", headers=auth)
    assert (response.status_code, response.get_json()["errors"]) == (422, {"cursor": ["Not a valid cursor."]})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REMINDER_LEAD_MINUTES", "43201", "REMINDER_LEAD_MINUTES must be at most 43200, got 43201"),
        ("REMINDER_POLL_SECONDS", "0", "REMINDER_POLL_SECONDS must be at least 1, got 0"),
        ("PUSH_ALLOW_INSECURE_ENDPOINTS", "maybe", "PUSH_ALLOW_INSECURE_ENDPOINTS must be true or false, got 'maybe'"),
        ("PUSH_TIMEOUT_SECONDS", "61", "PUSH_TIMEOUT_SECONDS must be at most 60, got 61"),
        ("PUSH_TIMEOUT_SECONDS", "0", "PUSH_TIMEOUT_SECONDS must be at least 1, got 0"),
        ("PUSH_SUBSCRIPTIONS_PER_USER", "0", "PUSH_SUBSCRIPTIONS_PER_USER must be at least 1, got 0"),
        ("REMINDER_PUSHES_PER_USER", "0", "REMINDER_PUSHES_PER_USER must be at least 1, got 0"),
    ],
)
def test_reminder_settings_out_of_range_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError) as raised:
        from_environment()
    assert str(raised.value) == message


def test_the_bounds_on_one_users_pushes_default_to_10_subscriptions_and_50_pushes_a_pass(monkeypatch):
    for name in ("PUSH_SUBSCRIPTIONS_PER_USER", "REMINDER_PUSHES_PER_USER", "PUSH_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    config = from_environment()
    assert (config["PUSH_SUBSCRIPTIONS_PER_USER"], config["REMINDER_PUSHES_PER_USER"]) == (10, 50)
    assert config["PUSH_TIMEOUT_SECONDS"] == 10
    monkeypatch.setenv("PUSH_SUBSCRIPTIONS_PER_USER", "3")
    monkeypatch.setenv("REMINDER_PUSHES_PER_USER", "200")
    config = from_environment()
    assert (config["PUSH_SUBSCRIPTIONS_PER_USER"], config["REMINDER_PUSHES_PER_USER"]) == (3, 200)
