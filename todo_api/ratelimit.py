"""Rate limits per client address and per user, counted with the `limits` library.

Two limits:

- per client address (`RATELIMIT_PER_IP`): every route except `/health` and
  CORS preflights, unknown paths included; checked in an app-wide
  `before_request`, so before authentication: it also bounds how fast one
  address can guess credentials.
- per user (`RATELIMIT_PER_USER`): the `/api` routes, checked by `limit_user()`
  right after authentication, keyed by `g.user_id`.

Each limit is a fixed window aligned to the clock (a minute limit resets at
every full minute, the same moment in every worker), so one counter increment
per limit per request tells both whether the request may pass and what the
headers say: no second read. Flask-Limiter, built on the same library, spends
about 75 µs per limit per request resolving which limits apply; these two are
known in advance.

Counters live in Redis when `REDIS_URL` is set, so the limits hold across
gunicorn workers and instances; otherwise in each worker's memory. When Redis
fails, the worker counts in memory (the same limits, per worker) and tries
Redis again after REDIS_RETRY_SECONDS: rate limiting never fails a request.
"""
import logging
import math
import threading
import time
from dataclasses import dataclass

from flask import current_app, g, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

log = logging.getLogger(__name__)

# A Redis that does not answer within this many seconds counts as down; the request goes on.
REDIS_TIMEOUT_SECONDS = 0.25
# While Redis is down, each worker tries it again this often.
REDIS_RETRY_SECONDS = 5
EXEMPT_ENDPOINTS = frozenset({"health.health"})
HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"]


class RateLimitExceeded(TooManyRequests):
    """429 with Retry-After; the errors module turns it into JSON."""


@dataclass(frozen=True)
class Limit:
    scope: str  # "ip" or "user": part of the counter's key
    items: tuple[RateLimitItem, ...]
    message: str


@dataclass(frozen=True)
class Window:
    """Where a client stands in one limit's current window, after this request."""

    limit: int
    remaining: int
    reset: int  # Unix time at which the window ends
    exceeded: bool


class Counters:
    """Counter increments in Redis, or in memory while Redis is down (or when there is none)."""

    def __init__(self, redis_url):
        self.memory = MemoryStorage()
        self.redis = None
        if redis_url:
            self.redis = storage_from_string(
                redis_url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
            )
        self.redis_down_until = None  # monotonic time; None while Redis is in use
        self.lock = threading.Lock()

    def incr(self, key, expiry):
        """The counter's value after adding one; it starts from zero and expires `expiry` seconds after."""
        if self.redis is not None:
            down_until = self.redis_down_until
            if down_until is None or time.monotonic() >= down_until:
                try:
                    count = self.redis.incr(key, expiry)
                except Exception as error:  # noqa: BLE001 - any failure of Redis means counting in memory
                    self.redis_failed(error)
                else:
                    if down_until is not None:
                        self.redis_back()
                    return count
        return self.memory.incr(key, expiry)

    def redis_failed(self, error):
        with self.lock:
            first = self.redis_down_until is None
            self.redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
        if first:
            log.warning("rate limit counters: Redis unreachable (%s), counting in memory per worker",
                        type(error).__name__)

    def redis_back(self):
        with self.lock:
            was_down, self.redis_down_until = self.redis_down_until is not None, None
        if was_down:
            log.warning("rate limit counters: Redis reachable again, counting in Redis")


class RateLimiter:
    def __init__(self, config):
        self.key_prefix = config["RATELIMIT_KEY_PREFIX"]
        self.per_ip = parsed_limit("RATELIMIT_PER_IP", config["RATELIMIT_PER_IP"], "ip", "per client address")
        self.per_user = parsed_limit("RATELIMIT_PER_USER", config["RATELIMIT_PER_USER"], "user", "per user")
        self.counters = Counters(config["REDIS_URL"])

    def hit(self, limit, identity):
        """Count this request against `limit` for `identity`; raise RateLimitExceeded past it.

        The window with the fewest requests left is kept in `g` for the response headers.
        """
        now = time.time()
        for item in limit.items:
            period = item.get_expiry()
            start = int(now // period * period)
            key = f"{self.key_prefix}/{limit.scope}/{identity}/{item.amount}/{period}/{start}"
            count = self.counters.incr(key, period)
            window = Window(item.amount, max(0, item.amount - count), start + period, count > item.amount)
            shown = g.get("rate_limit_window")
            if shown is None or window.exceeded or (not shown.exceeded and window.remaining < shown.remaining):
                g.rate_limit_window = window
            if window.exceeded:
                raise RateLimitExceeded(limit.message, retry_after=max(1, math.ceil(window.reset - now)))


def parsed_limit(setting, value, scope, whose):
    try:
        items = tuple(parse_many(value))
    except ValueError:
        raise RuntimeError(f"{setting} must be a rate limit such as '600 per minute', got {value!r}") from None
    described = "; ".join(str(item) for item in items)
    return Limit(scope, items, f"Rate limit exceeded: {described} {whose}")


def client_address():
    """The client's IP address; behind TRUSTED_PROXY_HOPS proxies, the one they saw."""
    return request.remote_addr or "unknown"


def limit_address():
    # CORS preflights carry no credentials and are answered without any work.
    if request.method == "OPTIONS" or request.endpoint in EXEMPT_ENDPOINTS:
        return
    limiter = current_app.extensions["todo_api.rate_limiter"]
    limiter.hit(limiter.per_ip, client_address())


def limit_user():
    """Count this request against the caller's per-user limit; 429 when it is used up.

    Call it after authentication, so the limit is keyed by the user.
    """
    limiter = current_app.extensions["todo_api.rate_limiter"]
    if limiter is not None:
        limiter.hit(limiter.per_user, g.user_id)


def rate_limit_headers(response):
    """X-RateLimit-Limit, -Remaining and -Reset of the window with the fewest requests left."""
    window = g.get("rate_limit_window")
    if window is not None:
        headers = response.headers
        headers["X-RateLimit-Limit"] = str(window.limit)
        headers["X-RateLimit-Remaining"] = str(window.remaining)
        headers["X-RateLimit-Reset"] = str(window.reset)
    return response


def init_app(app):
    config = app.config
    if config["TRUSTED_PROXY_HOPS"]:
        # Only the address: the last N entries of X-Forwarded-For were written by our proxies;
        # anything before them came from the client and is not trusted.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config["TRUSTED_PROXY_HOPS"], x_proto=0, x_host=0, x_port=0)
    if not config["RATELIMIT_ENABLED"]:
        app.extensions["todo_api.rate_limiter"] = None
        return
    app.extensions["todo_api.rate_limiter"] = RateLimiter(config)
    app.before_request(limit_address)
    if config["RATELIMIT_HEADERS_ENABLED"]:
        app.after_request(rate_limit_headers)
