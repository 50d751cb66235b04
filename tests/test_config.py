"""Configuration: database URLs, environment variables and the .env file."""

import os

import pytest

from todo_api import create_app
from todo_api.config import from_environment
from todo_api.database import get_engine, normalize_url


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


def test_an_invalid_integer_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("DATABASE_POOL_SIZE", "many")
    with pytest.raises(RuntimeError, match="DATABASE_POOL_SIZE"):
        from_environment()


def test_a_dotenv_file_in_the_working_directory_is_read(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("CORS_ORIGINS=https://from-dotenv.example\n")
    monkeypatch.delenv("CORS_ORIGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    try:
        app = create_app()
        get_engine(app).dispose()
        assert app.config["CORS_ORIGINS"] == ["https://from-dotenv.example"]
    finally:
        os.environ.pop("CORS_ORIGINS", None)  # load_dotenv set it; monkeypatch only restores what it changed


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REMINDER_LEAD_MINUTES", "43201", "REMINDER_LEAD_MINUTES must be at most 43200, got 43201"),
        ("REMINDER_POLL_SECONDS", "0", "REMINDER_POLL_SECONDS must be at least 1, got 0"),
        ("PUSH_ALLOW_INSECURE_ENDPOINTS", "maybe", "PUSH_ALLOW_INSECURE_ENDPOINTS must be true or false, got 'maybe'"),
    ],
)
def test_reminder_settings_out_of_range_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError) as raised:
        from_environment()
    assert str(raised.value) == message
