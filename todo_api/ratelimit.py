"""Rate limits per client address and per user, counted by Flask-Limiter.

Three limits, all fixed windows (one counter increment per limit per request):

- per client address (`RATELIMIT_PER_IP`): every route except `/health` and
  CORS preflights, unknown paths included. It is Flask-Limiter's application
  limit, checked in its `before_request` hook, so before authentication: it
  also bounds how fast one address can guess credentials.
- per user (`RATELIMIT_PER_USER`): the `/api` routes, checked by `limit_user()`
  right after authentication, keyed by `g.user_id` (by address if a request
  ever gets there without a user).
- per client address on the documentation (`RATELIMIT_DOCS`): `/docs`, its
  files and `/openapi.json` share one budget, tighter than the general one:
  the page is a 1.7 MB bundle, served to anyone.

A third bound, `RATELIMIT_CONCURRENT_PER_USER`, counts a user's requests in
progress in this worker process (`InFlight`): one more is refused at once
with 429, so however slow a user's requests are, they can hold only so many of
a worker's threads, and the rest serve everyone else.

Counters live in Redis when `REDIS_URL` is set, so the limits hold across
gunicorn workers and instances; otherwise in each worker's memory. When Redis
cannot be reached, Flask-Limiter falls back to in-memory counters (per worker,
with the same limits) and tries Redis again after 1, 2, 4 ... 32 seconds;
any other error of the limiter is logged and the request is served. Rate
limiting never turns a request into an error of its own.

The X-RateLimit-* headers are written here rather than by Flask-Limiter's
RATELIMIT_HEADERS_ENABLED: Flask-Limiter also puts Retry-After on every
response, and raises a 503's Retry-After to the end of the rate-limit window,
while a client should only be told to wait when it has been refused.
"""

import logging
import threading
import time

from flask import current_app, g, request
from flask_limiter import ApplicationLimit, Limiter
from limits import parse_many
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

from . import openapi

log = logging.getLogger(__name__)

# A Redis that does not answer within this many seconds counts as down: the
# request goes on with in-memory counters instead of waiting for it.
REDIS_TIMEOUT_SECONDS = 0.25
EXEMPT_ENDPOINTS = frozenset({"health.health"})
HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"]


def client_address():
    """The client's IP address; behind TRUSTED_PROXY_HOPS proxies, the one they saw."""
    return request.remote_addr or "unknown"


def user_key():
    user_id = g.get("user_id")
    return f"user:{user_id}" if user_id else f"ip:{client_address()}"


def address_key():
    return f"ip:{client_address()}"


def is_exempt():
    # CORS preflights carry no credentials and are answered without any work.
    return request.method == "OPTIONS" or request.endpoint in EXEMPT_ENDPOINTS


def request_identifier():
    # Flask-Limiter skips requests without an endpoint; unknown paths are counted too.
    return request.endpoint or "unrouted"


def described(setting, value):
    """The limits in a setting, as words for error messages; a RuntimeError names a bad setting."""
    try:
        items = parse_many(value)
    except ValueError:
        raise RuntimeError(f"{setting} must be a rate limit such as '600 per minute', got {value!r}") from None
    return "; ".join(str(item) for item in items)


def storage_settings(redis_url):
    """Flask-Limiter's storage URI and options for this configuration."""
    if not redis_url:
        return "memory://", {}
    return redis_url, {
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
    }


def per_user(*_args, **_kwargs):
    """Nothing: wrapped in the per-user limit, calling it counts the request against it."""


class InFlight:
    """How many requests each user has in progress in this process, up to `limit` each."""

    def __init__(self, limit):
        self.limit = limit
        self.lock = threading.Lock()
        self.counts = {}

    def enter(self, user_id):
        """Count one more request of `user_id`; False, counting nothing, when it already has `limit`."""
        with self.lock:
            count = self.counts.get(user_id, 0)
            if count >= self.limit:
                return False
            self.counts[user_id] = count + 1
            return True

    def leave(self, user_id):
        with self.lock:
            count = self.counts.pop(user_id) - 1
            if count:
                self.counts[user_id] = count


class TooManyInFlight(TooManyRequests):
    def __init__(self, limit):
        super().__init__(f"Too many requests in progress: at most {limit} at once per user", retry_after=1)


def init_app(app):
    config = app.config
    if config["TRUSTED_PROXY_HOPS"]:
        # Only the address: the last N entries of X-Forwarded-For were written by our proxies;
        # anything before them came from the client and is not trusted.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config["TRUSTED_PROXY_HOPS"], x_proto=0, x_host=0, x_port=0)
    app.extensions["todo_api.limit_user"] = None
    app.extensions["todo_api.in_flight"] = None
    if not config["RATELIMIT_ENABLED"]:
        return
    if config["RATELIMIT_CONCURRENT_PER_USER"]:
        app.extensions["todo_api.in_flight"] = InFlight(config["RATELIMIT_CONCURRENT_PER_USER"])
        app.teardown_request(leave_in_flight)

    per_ip = config["RATELIMIT_PER_IP"]
    ip_message = f"Rate limit exceeded: {described('RATELIMIT_PER_IP', per_ip)} per client address"
    user_limit = config["RATELIMIT_PER_USER"]
    user_message = f"Rate limit exceeded: {described('RATELIMIT_PER_USER', user_limit)} per user"
    storage_uri, storage_options = storage_settings(config["REDIS_URL"])

    limiter = Limiter(
        address_key,
        application_limits=[ApplicationLimit(per_ip, scope="ip", error_message=ip_message)],
        storage_uri=storage_uri,
        storage_options=storage_options,
        strategy="fixed-window",
        key_prefix=config["RATELIMIT_KEY_PREFIX"],
        request_identifier=request_identifier,
        headers_enabled=False,
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.request_filter(is_exempt)
    limiter.init_app(app)
    docs_limit = config["RATELIMIT_DOCS"]
    docs_message = (
        f"Rate limit exceeded: {described('RATELIMIT_DOCS', docs_limit)} per client address on the documentation"
    )
    limiter.shared_limit(docs_limit, scope="docs", key_func=address_key, error_message=docs_message)(openapi.bp)
    app.extensions["todo_api.limiter"] = limiter
    app.extensions["todo_api.limit_user"] = limiter.shared_limit(
        user_limit, scope="user", key_func=user_key, error_message=user_message
    )(per_user)
    app.after_request(rate_limit_headers)


def limit_user():
    """Count this request against the caller's per-user limits; 429 when one is used up.

    Call it after authentication, so the limits are keyed by the user. The
    request stays counted among the user's requests in progress until its
    teardown, whatever happens to it.
    """
    check = current_app.extensions["todo_api.limit_user"]
    if check is not None:
        check()
    in_flight = current_app.extensions["todo_api.in_flight"]
    if in_flight is not None:
        if not in_flight.enter(g.user_id):
            raise TooManyInFlight(in_flight.limit)
        g.in_flight_user = g.user_id


def leave_in_flight(_exc=None):
    user_id = g.pop("in_flight_user", None)
    if user_id is not None:
        current_app.extensions["todo_api.in_flight"].leave(user_id)


def rate_limit_headers(response):
    """X-RateLimit-Limit, -Remaining and -Reset of the limit that applied; Retry-After on a 429.

    The limit is the per-user one on /api routes once the caller is known, the
    per-address one otherwise.
    """
    limit = current_app.extensions["todo_api.limiter"].current_limit
    if limit is None:
        return response
    try:
        reset_at, remaining = limit.reset_at, limit.remaining
    except Exception as error:  # noqa: BLE001 - headers are not worth failing a request for
        log.warning("rate limit headers skipped: %s", type(error).__name__)
        return response
    headers = response.headers
    if current_app.config["RATELIMIT_HEADERS_ENABLED"]:
        headers["X-RateLimit-Limit"] = str(limit.limit.amount)
        headers["X-RateLimit-Remaining"] = str(remaining)
        headers["X-RateLimit-Reset"] = str(reset_at)
    if limit.breached:
        headers["Retry-After"] = str(max(1, reset_at - int(time.time())))
    return response
