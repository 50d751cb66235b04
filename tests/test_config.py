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
