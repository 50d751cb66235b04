"""gunicorn settings (the Procfile's web process), from the environment; docs/configuration.md lists them.

gunicorn's stock gevent worker: every client connection is served by a greenlet of its own, so idle and slow
clients cost a socket and a greenlet, never a thread; psycopg2 is made cooperative in each worker. The hooks
below (gunicorn_hooks.py) add what no setting covers.
"""

import gc
import importlib.util
import os

import gunicorn_hooks


def project_parsers():
    """todo_api/config.py's env_* parsers, loaded from the file alone: importing the package would load the whole
    app (Flask, SQLAlchemy, Redis) into gunicorn's master, before the gevent workers patch the standard library."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "todo_api", "config.py")
    spec = importlib.util.spec_from_file_location("todo_api_config_for_gunicorn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def debug_requested():
    """FLASK_DEBUG as Flask reads it (flask.helpers.get_debug_flag): anything but empty, 0, false or no."""
    value = os.environ.get("FLASK_DEBUG", "")
    return bool(value) and value.lower() not in ("0", "false", "no")


if debug_requested():
    raise SystemExit("FLASK_DEBUG is set: debug mode must never run under gunicorn; unset FLASK_DEBUG")

parsers = project_parsers()
try:
    bind = f"0.0.0.0:{parsers.env_int('PORT', 8000, minimum=1, maximum=65535)}"
    workers = parsers.env_int("WEB_CONCURRENCY", 2, minimum=1)
    # Open connections per worker, idle and slow ones included (each is a greenlet); past it the worker stops
    # accepting until some close.
    worker_connections = parsers.env_int("GUNICORN_WORKER_CONNECTIONS", 1000, minimum=1)
    # Under the platform router's 30 s. A worker whose main loop is silent this long is restarted; a request body
    # must be in within it (then 408), and a client that takes no part of a response for this long is dropped.
    timeout = parsers.env_int("GUNICORN_TIMEOUT", 25, minimum=1)
    # On SIGTERM, workers stop accepting and get this long to finish the requests under way.
    graceful_timeout = parsers.env_int("GUNICORN_GRACEFUL_TIMEOUT", 20, minimum=1)
    # Seconds a connection may wait for its next request and take to send that request's head (request line and
    # headers), from the end of the previous response (or from the connection's start); then it is closed.
    keepalive = parsers.env_int("GUNICORN_KEEPALIVE", 5, minimum=1)
    # Open connections per client address and worker; more are closed at once. 0: no cap (behind a router, every
    # connection comes from the router's addresses).
    max_connections_per_address = parsers.env_int("GUNICORN_MAX_CONNECTIONS_PER_ADDRESS", 100)
    accesslog = "-" if parsers.env_bool("GUNICORN_ACCESS_LOG", True) else None
    loglevel = parsers.env_str("LOG_LEVEL", "info").lower()
except RuntimeError as error:  # a bad value: one line that names the variable
    raise SystemExit(str(error)) from None

worker_class = "gevent"
errorlog = "-"
# The access line (address, method, path without its query string, protocol, status, bytes, milliseconds; no
# header), and an error log that never quotes a request gunicorn could not parse (gunicorn_hooks.Logger).
logger_class = "gunicorn_hooks.Logger"
# No runtime control socket: its default path is one per user, shared by every gunicorn on the machine.
control_socket_disable = True
# The app's body limit: a declared body up to it is read before the app runs (see post_worker_init).
max_body_bytes = parsers.from_environment()["MAX_CONTENT_LENGTH"]

# gunicorn answers a request it cannot parse with an HTML page that quotes it; this service answers in JSON.
gunicorn_hooks.install_json_error_page()


def post_fork(server, worker):
    gunicorn_hooks.make_postgres_cooperative()


def post_worker_init(worker):
    gunicorn_hooks.keep_backlog(worker)
    gunicorn_hooks.cap_connections_per_address(worker, max_connections_per_address)
    worker.wsgi = gunicorn_hooks.with_client_deadlines(worker.wsgi, max_body_bytes, timeout)
    # Everything loaded so far (the app, its schemas, SQLAlchemy's compiled statements) lives as long as the
    # worker: out of the garbage collector's sight, a full collection does not walk it, and no request waits on one.
    gc.freeze()


def worker_exit(server, worker):
    gunicorn_hooks.serve_backlog(worker)


def pre_request(worker, req):
    gunicorn_hooks.close_after_chunked_body(req)


def post_request(worker, req, environ, resp):
    gunicorn_hooks.linger_after_chunked_body(req, environ)
