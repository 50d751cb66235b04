"""Configuration: database URLs, environment variables and the .env file."""

import contextlib
import os
import runpy
import subprocess
import sys
from unittest import mock

import click
import pytest
from flask.cli import cli as flask_group
from flask.cli import run_command
from itsdangerous import URLSafeSerializer

from support import free_port
from todo_api import DEVELOPMENT_SECRET, MISSING_DATABASE_URL, UNCHECKABLE_SIGNATURES, create_app
from todo_api.cli import init_db_command
from todo_api.config import PLATFORM_ROUTER_VARIABLES, from_environment
from todo_api.db.connections import get_engine
from todo_api.db.engine import normalize_url
from todo_api.mode import Mode, get_mode
from todo_api.tasks import listing

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
    assert app_in(working).config["CORS_ORIGINS"] == []
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
    with loaded_by(run_command):
        app = create_app()
    get_engine(app).dispose()
    assert (app.debug, get_mode(app)) == (True, Mode.DEVELOPMENT)
    assert development_warnings(caplog) == [DEVELOPMENT_WARNING]


def test_debug_outside_the_development_server_still_needs_a_secret(no_secret, monkeypatch):
    """FLASK_DEBUG=1 under gunicorn (which loads wsgi.py) is production all the same."""
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(RuntimeError, match=r"^SECRET_KEY or BETTER_AUTH_SECRET must be set: page cursors are signed"):
        runpy.run_path(os.path.join(REPO, "wsgi.py"))


@pytest.mark.parametrize("variable", ["SECRET_KEY", "BETTER_AUTH_SECRET"])
def test_production_signs_cursors_with_the_secret_it_is_given(no_secret, make_app, auth, caplog, variable):
    client = make_app(TESTING=False, **{variable: KEY}).test_client()
    assert development_warnings(caplog) == ([UNCHECKABLE_SIGNATURES] if variable == "SECRET_KEY" else [])
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


# -- Production unless something says otherwise (todo_api/mode.py) -------------------------------------------------

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
OUR_VARIABLES = [
    "DATABASE_URL",
    "SECRET_KEY",
    "BETTER_AUTH_SECRET",
    "FLASK_DEBUG",
    "CORS_ORIGINS",
    "TRUSTED_PROXY_HOPS",
]


@pytest.fixture
def bare(monkeypatch, tmp_path):
    """An environment with none of the service's variables, not even the platforms' (DYNO, RENDER), and no .env."""
    for name in [*OUR_VARIABLES, *PLATFORM_ROUTER_VARIABLES]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def loaded_by(command):
    """The click context in which the `flask` command loads the app: `flask run` loads it in `run_command`'s, every
    other command in the `flask` group's (None: no command at all, as under gunicorn, which loads wsgi.py)."""
    return click.Context(command) if command is not None else contextlib.nullcontext()


def app_loaded_by(command, monkeypatch, **environment):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with loaded_by(command):
        app = create_app()
    get_engine(app).dispose()
    return app


def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'todo.sqlite'}"


@pytest.mark.parametrize(
    ("debug", "command", "mode"),
    [
        ({}, None, Mode.PRODUCTION),  # gunicorn, as the Procfile runs it
        ({"FLASK_DEBUG": "1"}, None, Mode.PRODUCTION),  # gunicorn with FLASK_DEBUG
        ({}, run_command, Mode.PRODUCTION),  # flask run
        ({"FLASK_DEBUG": "1"}, run_command, Mode.DEVELOPMENT),  # make run
        ({}, flask_group, Mode.COMMAND),  # flask init-db, create-session, reminders run ...
        ({"FLASK_DEBUG": "1"}, flask_group, Mode.COMMAND),
        ({}, init_db_command, Mode.COMMAND),
    ],
    ids=["gunicorn", "gunicorn-debug", "flask-run", "flask-run-debug", "command", "command-debug", "init-db"],
)
def test_the_mode_is_production_unless_something_says_otherwise(bare, monkeypatch, tmp_path, debug, command, mode):
    app = app_loaded_by(command, monkeypatch, DATABASE_URL=sqlite_url(tmp_path), SECRET_KEY=KEY, **debug)
    assert get_mode(app) is mode


def test_the_test_suites_apps_are_in_testing_mode(app):
    assert get_mode(app) is Mode.TESTING


@pytest.mark.parametrize(
    ("debug", "command"),
    [({}, None), ({"FLASK_DEBUG": "1"}, None), ({}, run_command)],
    ids=["gunicorn", "gunicorn-debug", "flask-run"],
)
def test_production_without_a_database_url_refuses_to_start(bare, monkeypatch, debug, command):
    with pytest.raises(RuntimeError) as raised:
        app_loaded_by(command, monkeypatch, SECRET_KEY=KEY, **debug)
    assert str(raised.value) == MISSING_DATABASE_URL


@pytest.mark.parametrize("command", [run_command, flask_group], ids=["make-run", "command"])
def test_development_and_commands_without_a_database_url_use_sqlite_in_the_instance_folder(bare, monkeypatch, command):
    app = app_loaded_by(command, monkeypatch, FLASK_DEBUG="1")
    assert get_engine(app).url.render_as_string() == "sqlite:///" + os.path.join(app.instance_path, "todo.sqlite")


@pytest.mark.parametrize(
    ("debug", "command", "origins"),
    [
        ({}, None, []),
        ({"FLASK_DEBUG": "1"}, None, []),
        ({}, run_command, []),
        ({"FLASK_DEBUG": "1"}, run_command, ["http://localhost:3000"]),
        ({}, flask_group, []),
    ],
    ids=["gunicorn", "gunicorn-debug", "flask-run", "make-run", "command"],
)
def test_cross_origin_access_is_allowed_by_default_only_in_development(
    bare, monkeypatch, tmp_path, debug, command, origins
):
    app = app_loaded_by(command, monkeypatch, DATABASE_URL=sqlite_url(tmp_path), SECRET_KEY=KEY, **debug)
    assert app.config["CORS_ORIGINS"] == origins


@pytest.mark.parametrize("command", [None, run_command], ids=["gunicorn", "make-run"])
def test_cors_origins_once_set_hold_in_every_mode(bare, monkeypatch, tmp_path, command):
    app = app_loaded_by(
        command,
        monkeypatch,
        DATABASE_URL=sqlite_url(tmp_path),
        SECRET_KEY=KEY,
        FLASK_DEBUG="1",
        CORS_ORIGINS="https://app.example.com",
    )
    assert app.config["CORS_ORIGINS"] == ["https://app.example.com"]


def test_gunicorn_without_a_database_url_exits_with_the_reason_in_one_line():
    """As the Procfile runs it: every worker fails to boot, so gunicorn stops (exit 3, "Worker failed to boot")."""
    env = {name: value for name, value in os.environ.items() if name not in OUR_VARIABLES}
    env.update(PORT=str(free_port()), WEB_CONCURRENCY="1", SECRET_KEY=KEY)
    command = [GUNICORN, "--config", "gunicorn.conf.py", "wsgi:app"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"RuntimeError: {MISSING_DATABASE_URL}" in done.stderr.splitlines()
    assert "Reason: Worker failed to boot." in done.stderr


# -- Behind a platform's router ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "hops"),
    [
        ({}, 0),
        ({"DYNO": "web.1"}, 1),
        ({"RENDER": "true"}, 1),
        ({"DYNO": "web.1", "TRUSTED_PROXY_HOPS": "0"}, 0),
        ({"RENDER": "true", "TRUSTED_PROXY_HOPS": "2"}, 2),
        ({"TRUSTED_PROXY_HOPS": "1"}, 1),
    ],
    ids=["elsewhere", "heroku", "render", "heroku-told-none", "render-told-two", "told-one"],
)
def test_trusted_proxy_hops_default_to_one_on_heroku_and_render(bare, monkeypatch, environment, hops):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert from_environment()["TRUSTED_PROXY_HOPS"] == hops


# -- Malformed settings name their variable -------------------------------------------------------------------------

# Settings in the configuration that no variable sets.
NOT_FROM_ENVIRONMENT = {"MAX_CONTENT_LENGTH"}


def settings_of_type(kind):
    """The settings whose default is of this type (bool is not taken for int): every one the environment sets."""
    with mock.patch.dict(os.environ, {}, clear=True):
        defaults = from_environment()
    return [name for name, value in defaults.items() if type(value) is kind and name not in NOT_FROM_ENVIRONMENT]


def test_the_typed_settings_are_found():
    """So that the two tests below cannot pass by checking nothing."""
    assert {"DATABASE_POOL_SIZE", "TRUSTED_PROXY_HOPS", "REMINDER_POLL_SECONDS"} <= set(settings_of_type(int))
    assert {"DATABASE_POOL_PRE_PING", "DOCS_ENABLED", "PUSH_ALLOW_INSECURE_ENDPOINTS"} <= set(settings_of_type(bool))


@pytest.mark.parametrize("name", settings_of_type(int))
def test_every_integer_setting_names_its_variable_when_malformed(monkeypatch, name):
    monkeypatch.setenv(name, "12x")
    with pytest.raises(RuntimeError) as raised:
        from_environment()
    assert str(raised.value) == f"{name} must be an integer, got '12x'"


@pytest.mark.parametrize("name", settings_of_type(bool))
def test_every_boolean_setting_names_its_variable_when_malformed(monkeypatch, name):
    monkeypatch.setenv(name, "sometimes")
    with pytest.raises(RuntimeError) as raised:
        from_environment()
    assert str(raised.value) == f"{name} must be true or false, got 'sometimes'"


URL_FORMS = "postgres://user:password@host:5432/name or sqlite:///path"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "db.example:5432/todo", f"DATABASE_URL is not a database URL: {URL_FORMS}"),
        (
            "DATABASE_URL",
            "postgres://todo:hunter2@db.example:port/todo",
            f"DATABASE_URL is not a database URL: {URL_FORMS}",
        ),
        (
            "DATABASE_URL",
            "mysql://todo:hunter2@db.example/todo",
            "DATABASE_URL must be a postgres://, postgresql:// or postgresql+psycopg2:// URL or a sqlite:/// path, "
            "got a mysql:// URL",
        ),
        (
            "DATABASE_MIGRATION_URL",
            "postgresql+asyncpg://todo:hunter2@db.example/todo",
            "DATABASE_MIGRATION_URL must be a postgres://, postgresql:// or postgresql+psycopg2:// URL or a sqlite:/// "
            "path, got a postgresql+asyncpg:// URL",
        ),
        ("DATABASE_MIGRATION_URL", "hunter2", f"DATABASE_MIGRATION_URL is not a database URL: {URL_FORMS}"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'"),
        ("REDIS_URL", "cache.example:6379", "REDIS_URL must be a redis://, rediss:// or unix:// URL"),
        ("REDIS_URL", "http://:hunter2@cache.example:6379", "REDIS_URL must be a redis://, rediss:// or unix:// URL"),
        ("TRUSTED_PROXY_HOPS", "-1", "TRUSTED_PROXY_HOPS must be at least 0, got -1"),
    ],
)
def test_a_malformed_setting_names_its_variable_and_never_repeats_a_url(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError) as raised:
        from_environment()
    assert str(raised.value) == message


def test_log_level_is_taken_in_any_case(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "warning")
    assert from_environment()["LOG_LEVEL"] == "WARNING"


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
