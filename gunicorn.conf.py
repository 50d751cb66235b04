"""gunicorn settings, from the environment (see the README's configuration table)."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, but a stopping worker serves the connections already waiting instead of resetting them.
worker_class = "gunicorn_worker.DrainingThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# Under the platform router's 30 s, so a stuck request is ended by us, with a log line.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "25"))
# On SIGTERM, workers stop accepting and get this long to finish in-flight requests.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG", "true").lower() in ("1", "true", "yes", "on") else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# No Authorization header or cookie in the access log format: only the request line.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
# No runtime control socket: its default path is one per user, shared by every gunicorn on the machine.
control_socket_disable = True
