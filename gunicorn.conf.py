"""gunicorn settings, from the environment (see the README's configuration table)."""

import gc
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, but no thread waits on a client: requests are read and responses sent by the worker's main thread,
# under the deadlines GUNICORN_HEADER_TIMEOUT, GUNICORN_BODY_TIMEOUT and GUNICORN_WRITE_TIMEOUT, with at most
# GUNICORN_MAX_CONNECTIONS_PER_ADDRESS connections per client address (read by the worker, see
# gunicorn_worker.py); and a stopping worker serves the connections already waiting instead of resetting them.
worker_class = "gunicorn_worker.BufferingThreadWorker"
# A request waiting for one of its user's places (RATELIMIT_CONCURRENT_PER_USER, 3) holds its thread: 8, so that
# one user's requests running and waiting leave threads for everyone else.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Open connections per worker, idle and slow ones included; past it the worker stops accepting for a moment.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# Under the platform router's 30 s, so a stuck request is ended by us, with a log line.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "25"))
# On SIGTERM, workers stop accepting and get this long to finish in-flight requests.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
# Seconds an idle connection (new, or kept alive between requests) stays open.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG", "true").lower() in ("1", "true", "yes", "on") else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# The access line: address, method, path and protocol (no query string: it carries search words and page cursors;
# no header), status, bytes, milliseconds; composed directly, at a fraction of gunicorn's own cost.
logger_class = "gunicorn_access_log.Logger"
# No runtime control socket: its default path is one per user, shared by every gunicorn on the machine.
control_socket_disable = True


def post_worker_init(worker):
    """Everything loaded so far (the app, its schemas, SQLAlchemy's compiled statements) lives as long as the
    worker: out of the garbage collector's sight, a full collection does not walk it, and no request waits on one."""
    gc.freeze()
