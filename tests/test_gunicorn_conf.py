"""gunicorn.conf.py: the settings a deploy turns, read by the project's one parser, and debug mode refused.

Each case runs gunicorn as the Procfile does (or loads its settings file) in a process of its own, with the
environment of a deploy: a bad value, or FLASK_DEBUG, stops it before it binds a port or loads the app.
"""

import json
import os
import subprocess
import sys

import pytest

from support import REPO

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
SETTINGS = (
    "bind",
    "workers",
    "worker_class",
    "worker_connections",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "max_connections_per_address",
    "accesslog",
    "loglevel",
    "max_body_bytes",
)
# What the settings file reads, and nothing else: the variables the tests set, on top of the system's own.
READ = (
    "PORT",
    "WEB_CONCURRENCY",
    "GUNICORN_WORKER_CONNECTIONS",
    "GUNICORN_TIMEOUT",
    "GUNICORN_GRACEFUL_TIMEOUT",
    "GUNICORN_KEEPALIVE",
    "GUNICORN_MAX_CONNECTIONS_PER_ADDRESS",
    "GUNICORN_ACCESS_LOG",
    "LOG_LEVEL",
    "FLASK_DEBUG",
)


def environment(**values):
    return {**{name: value for name, value in os.environ.items() if name not in READ}, **values}


def start_gunicorn(**values):
    return subprocess.run(
        [GUNICORN, "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=REPO,
        env=environment(**values),
        capture_output=True,
        text=True,
        timeout=60,
    )


def load_settings(**values):
    """The settings gunicorn.conf.py computes from this environment (loaded as gunicorn loads it, by path)."""
    program = (
        "import json, runpy; settings = runpy.run_path('gunicorn.conf.py'); "
        f"print(json.dumps({{name: settings[name] for name in {SETTINGS!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=environment(**values), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_defaults():
    assert load_settings() == {
        "bind": "0.0.0.0:8000",
        "workers": 2,
        "worker_class": "gevent",
        "worker_connections": 1000,
        "timeout": 25,
        "graceful_timeout": 20,
        "keepalive": 5,
        "max_connections_per_address": 100,
        "accesslog": "-",
        "loglevel": "info",
        "max_body_bytes": 1024 * 1024,
    }


def test_each_setting_from_its_variable():
    assert load_settings(
        PORT="5001",
        WEB_CONCURRENCY="3",
        GUNICORN_WORKER_CONNECTIONS="4000",
        GUNICORN_TIMEOUT="28",
        GUNICORN_GRACEFUL_TIMEOUT="9",
        GUNICORN_KEEPALIVE="75",
        GUNICORN_MAX_CONNECTIONS_PER_ADDRESS="0",
        GUNICORN_ACCESS_LOG="off",
        LOG_LEVEL="WARNING",
        FLASK_DEBUG="0",
    ) == {
        "bind": "0.0.0.0:5001",
        "workers": 3,
        "worker_class": "gevent",
        "worker_connections": 4000,
        "timeout": 28,
        "graceful_timeout": 9,
        "keepalive": 75,
        "max_connections_per_address": 0,
        "accesslog": None,
        "loglevel": "warning",
        "max_body_bytes": 1024 * 1024,
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # (A WEB_CONCURRENCY that is no integer stops gunicorn itself, which reads it too, with a traceback.)
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1, got 0"),
        ("PORT", "80000", "PORT must be at most 65535, got 80000"),
        ("GUNICORN_TIMEOUT", "2.5", "GUNICORN_TIMEOUT must be an integer, got '2.5'"),
        ("GUNICORN_KEEPALIVE", "0", "GUNICORN_KEEPALIVE must be at least 1, got 0"),
        (
            "GUNICORN_MAX_CONNECTIONS_PER_ADDRESS",
            "-1",
            "GUNICORN_MAX_CONNECTIONS_PER_ADDRESS must be at least 0, got -1",
        ),
        ("GUNICORN_ACCESS_LOG", "maybe", "GUNICORN_ACCESS_LOG must be true or false, got 'maybe'"),
    ],
)
def test_a_bad_value_stops_gunicorn_with_one_line_naming_the_variable(name, value, message):
    done = start_gunicorn(**{name: value})
    assert (done.returncode, done.stderr, done.stdout) == (1, message + "\n", "")


# Flask turns debug mode on for any FLASK_DEBUG but empty, 0, false and no: "off" too.
@pytest.mark.parametrize("value", ["1", "true", "True", "yes", "on", "off", "2"])
def test_flask_debug_stops_gunicorn_with_one_line_naming_it(value):
    done = start_gunicorn(FLASK_DEBUG=value)
    assert (done.returncode, done.stderr, done.stdout) == (
        1,
        "FLASK_DEBUG is set: debug mode must never run under gunicorn; unset FLASK_DEBUG\n",
        "",
    )


@pytest.mark.parametrize("value", ["", "0", "false", "no", "FALSE"])
def test_flask_debug_off_is_accepted(value):
    assert load_settings(FLASK_DEBUG=value)["worker_class"] == "gevent"
