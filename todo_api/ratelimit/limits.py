"""Rate limits per client address and per user, as fixed-window counters in memory or in Redis.

Three limits, all fixed windows (a window starts with its first request and
lasts the limit's period; one counter increment per limit per request):

- per client address (`RATELIMIT_PER_IP`): every route except `/health` and
  CORS preflights, unknown paths included.
- per user (`RATELIMIT_PER_USER`): the `/api` routes, counted by `limit_user()`
  right after authentication, keyed by the caller's user id (by address if a
  request ever gets there without a user).
- per client address on the documentation (`RATELIMIT_DOCS`): `/docs`, its
  files and `/openapi.json` share one budget, tighter than the general one:
  the page is a 1.7 MB bundle, served to anyone.

Each request is counted once, in one step for all the limits that apply to
it: one increment under one lock in memory, one round trip (a small Lua
script) with Redis. Outside `/api` that happens in `before_request`. On `/api`
the address is counted together with the user, after authentication; before
authentication, an address this process has seen use up its budget is refused
at once, until its window ends, so a client guessing tokens gets no session
lookup once its budget is spent. A request that never gets as far as
`limit_user()` (a 401, a 503 during authentication, an unknown `/api` path) has
its address counted when its response is made.

A third bound, `RATELIMIT_CONCURRENT_PER_USER`, counts a user's requests in
progress in this worker process (`InFlight`): one more is refused at once
with 429, so however slow a user's requests are, they can hold only so many of
a worker's threads, and the rest serve everyone else.

Counters live in Redis when `REDIS_URL` is set, so the limits hold across
gunicorn workers and instances; otherwise in each worker's memory. When Redis
fails (no answer within 0.25 s, a refused connection, an error reply), the
worker counts in memory instead (per worker, with the same limits) and tries
Redis again after 1, 2, 4 ... 32 seconds; any other error of the limiter is
logged and the request is served. Rate limiting never turns a request into an
error of its own.

Limit strings are parsed once, when the app is made, by the `limits` package
(`600 per minute`, `10/second`, `100 per minute; 2000 per hour`).
"""

import hashlib
import logging
import math
import threading
import time
from typing import NamedTuple

import redis
from flask import current_app, g, request
from limits import parse_many
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

log = logging.getLogger(__name__)

# A Redis that does not answer within this many seconds counts as down: the
# request goes on with in-memory counters instead of waiting for it.
REDIS_TIMEOUT_SECONDS = 0.25
# After a failure, Redis is tried again after 1, 2, 4 ... this many seconds, then every this many seconds.
REDIS_RETRY_MAX_SECONDS = 32
# Expired windows are dropped from memory at most this often.
SWEEP_SECONDS = 10
EXEMPT_ENDPOINTS = frozenset({"health.health"})
DOCS_BLUEPRINT = "openapi"
# Routes under this prefix are counted per user after authentication, their address with it.
USER_LIMITED_PREFIX = "/api/"
HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"]

# Counts one request in each window of KEYS, ARGV holding each window's length in
# milliseconds; answers each window's count and the milliseconds left in it.
# A window starts with its first request (INCR makes the key, PEXPIRE ends it).
COUNT_SCRIPT = """
local result = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  local left = -1
  if count > 1 then left = redis.call('PTTL', key) end
  if left < 0 then
    left = tonumber(ARGV[i])
    redis.call('PEXPIRE', key, left)
  end
  result[#result + 1] = count
  result[#result + 1] = left
end
return result
"""
COUNT_SCRIPT_SHA = hashlib.sha1(COUNT_SCRIPT.encode()).hexdigest()


def address_key(current_request):
    """The client's IP address as a counter key; behind TRUSTED_PROXY_HOPS proxies, the one they saw."""
    return f"ip:{current_request.remote_addr or 'unknown'}"


class RateLimitExceeded(TooManyRequests):
    pass


class Window:
    """One `amount per period` of a limit; `suffix` ends its counters' keys."""

    __slots__ = ("amount", "seconds", "milliseconds", "suffix")

    def __init__(self, item, scope):
        self.amount = item.amount
        self.seconds = item.get_expiry()
        self.milliseconds = self.seconds * 1000
        # The keys Flask-Limiter used: counters in a shared Redis carry over.
        self.suffix = f"/{scope}/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"


class Limit:
    """A limit setting, parsed once: its windows (all must hold) and the detail of its 429."""

    def __init__(self, setting, value, scope, whose):
        try:
            items = parse_many(value)
        except ValueError:
            raise RuntimeError(f"{setting} must be a rate limit such as '600 per minute', got {value!r}") from None
        self.windows = tuple(sorted((Window(item, scope) for item in items), key=lambda window: window.seconds))
        self.message = f"Rate limit exceeded: {'; '.join(str(item) for item in items)} {whose}"


class MemoryCounters:
    """Fixed windows in this process's memory, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.windows = {}  # key -> [count, end]
        self.next_sweep = 0.0

    def count(self, keys, windows, now):
        """Count one request in each key's window; each window's (count, end) as a Unix time."""
        counted = []
        with self.lock:
            if now >= self.next_sweep:
                self.sweep(now)
            for key, window in zip(keys, windows, strict=True):
                state = self.windows.get(key)
                if state is None or state[1] <= now:
                    state = self.windows[key] = [0, now + window.seconds]
                state[0] += 1
                counted.append((state[0], state[1]))
        return counted

    def sweep(self, now):
        self.windows = {key: state for key, state in self.windows.items() if state[1] > now}
        self.next_sweep = now + SWEEP_SECONDS


class RedisCounters:
    """Fixed windows in Redis: one round trip per request, however many limits it counts.

    Connections are taken from a list of idle ones (one per request counting
    at this moment, so at most one per thread) and created when it is empty;
    a connection that failed is closed and reconnects on its next use. redis-py
    only makes them: its pool's checks cost more than the count itself.
    """

    def __init__(self, url):
        self.pool = redis.ConnectionPool.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # a failure goes to memory at once, never retried with backoff
        )
        self.idle = []

    def count(self, keys, windows, now):
        try:
            connection = self.idle.pop()
        except IndexError:
            connection = self.pool.make_connection()
        try:
            reply = self.run(connection, keys, [window.milliseconds for window in windows])
        except BaseException:
            connection.disconnect()
            raise
        finally:
            self.idle.append(connection)
        return [(reply[i], now + reply[i + 1] / 1000) for i in range(0, len(reply), 2)]

    @staticmethod
    def run(connection, keys, milliseconds):
        connection.send_command("EVALSHA", COUNT_SCRIPT_SHA, len(keys), *keys, *milliseconds)
        try:
            return connection.read_response()
        except redis.exceptions.NoScriptError:  # the first use on this server (or after SCRIPT FLUSH)
            connection.send_command("EVAL", COUNT_SCRIPT, len(keys), *keys, *milliseconds)
            return connection.read_response()


class Counters:
    """Redis when configured and answering, else this process's memory."""

    def __init__(self, redis_url):
        self.memory = MemoryCounters()
        self.redis = RedisCounters(redis_url) if redis_url else None
        self.redis_down = False
        self.retry_at = 0.0
        self.retry_delay = 1

    def count(self, keys, windows, now):
        if self.redis is None or (self.redis_down and not self.retry_due(now)):
            return self.memory.count(keys, windows, now)
        try:
            counted = self.redis.count(keys, windows, now)
        except (redis.RedisError, OSError) as error:
            self.failed(error, now)
            return self.memory.count(keys, windows, now)
        if self.redis_down:
            self.redis_down = False
            self.retry_delay = 1
            log.info("rate limit counters: Redis answers again; counting there")
        return counted

    def retry_due(self, now):
        """True for the one request that tries Redis again once the delay is over (the others keep to memory)."""
        if now < self.retry_at:
            return False
        self.retry_at = now + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, REDIS_RETRY_MAX_SECONDS)
        return True

    def failed(self, error, now):
        if not self.redis_down:
            self.redis_down = True
            self.retry_at = now + self.retry_delay
            self.retry_delay = min(self.retry_delay * 2, REDIS_RETRY_MAX_SECONDS)
            log.warning("rate limit counters: Redis failed (%s); counting in memory", type(error).__name__)


class RateLimits:
    """The limits of one app and their counters."""

    def __init__(self, config):
        self.per_ip = Limit("RATELIMIT_PER_IP", config["RATELIMIT_PER_IP"], "ip", "per client address")
        self.per_user = Limit("RATELIMIT_PER_USER", config["RATELIMIT_PER_USER"], "user", "per user")
        self.docs = Limit("RATELIMIT_DOCS", config["RATELIMIT_DOCS"], "docs", "per client address on the documentation")
        self.key_prefix = f"LIMITS:LIMITER/{config['RATELIMIT_KEY_PREFIX']}/"
        self.headers_enabled = config["RATELIMIT_HEADERS_ENABLED"]
        self.counters = Counters(config["REDIS_URL"])
        self.blocked = {}  # address key -> its exceeded Standing: refused before authentication until its reset

    def count(self, counted):
        """Count this request against each (key, limit) in `counted`; the first limit it exceeds, or None.

        Sets `g.rate_limit` to what the headers show: the limit exceeded, or else the last of `counted`.
        """
        request_globals = g._get_current_object()
        keys = []
        windows = []
        for key, limit in counted:
            for window in limit.windows:
                keys.append(self.key_prefix + key + window.suffix)
                windows.append(window)
        now = time.time()
        try:
            results = iter(self.counters.count(keys, windows, now))
        except Exception as error:  # noqa: BLE001 - a limiter failure must not fail the request
            log.error("rate limit not counted: %s", type(error).__name__)
            return None
        for key, limit in counted:
            shown = None
            for window in limit.windows:
                standing = Standing.of(window, *next(results))
                if shown is None or standing.tighter_than(shown):
                    shown = standing
            request_globals.rate_limit = shown
            if shown.exceeded:
                if limit is self.per_ip:
                    self.blocked[key] = shown
                return limit
        return None

    def refuse_if_blocked(self, address):
        """429 for an address that used up its budget in this process, without counting (before authentication)."""
        shown = self.blocked.get(address)
        if shown is None:
            return
        if shown.reset > time.time():
            g.rate_limit = shown
            raise exceeded(self.per_ip)
        self.blocked.pop(address, None)


class Standing(NamedTuple):
    """Where a request leaves one window: what the X-RateLimit-* headers say."""

    amount: int
    remaining: int
    reset: float  # Unix time when the window ends
    exceeded: bool

    @classmethod
    def of(cls, window, count, end):
        return cls(window.amount, max(0, window.amount - count), end, count > window.amount)

    def tighter_than(self, other):
        """Of a limit's windows, the headers show an exceeded one (the last to end), else the fewest remaining."""
        if self.exceeded:
            return not other.exceeded or self.reset > other.reset
        return not other.exceeded and self.remaining < other.remaining


def exceeded(limit):
    return RateLimitExceeded(limit.message, retry_after=max(1, math.ceil(g.rate_limit.reset - time.time())))


RATE_LIMITS = "todo_api.rate_limits"
IN_FLIGHT = "todo_api.in_flight"


def get_rate_limits(app=None):
    """The app's rate-limit counters (None when rate limits are off)."""
    return (app or current_app).extensions[RATE_LIMITS]


def get_in_flight(app=None):
    """The app's bound on one user's requests in progress (None when it is off)."""
    return (app or current_app).extensions[IN_FLIGHT]


# The hooks below run on every request: each looks the request's context up once (`_get_current_object`), where
# every attribute read through Flask's `request` and `g` proxies would look it up again.


def count_request():
    """before_request: count the address (and the docs limit), or, on /api, leave it for `limit_user()`."""
    current = request._get_current_object()
    # CORS preflights carry no credentials and are answered without any work.
    if current.method == "OPTIONS" or current.endpoint in EXEMPT_ENDPOINTS:
        return
    limits = get_rate_limits()
    address = address_key(current)
    if current.path.startswith(USER_LIMITED_PREFIX):
        limits.refuse_if_blocked(address)
        g.rate_limit_address = address
        return
    if current.blueprint == DOCS_BLUEPRINT:
        counted = [(address, limits.docs), (address, limits.per_ip)]
    else:
        counted = [(address, limits.per_ip)]
    breached = limits.count(counted)
    if breached is not None:
        raise exceeded(breached)


def limit_user(user_id):
    """Count this request against the caller's per-user limit (and its address's); 429 when one is used up.

    Call it after authentication, with the caller's user id. The
    request stays counted among the user's requests in progress until its
    teardown, whatever happens to it.
    """
    request_globals = g._get_current_object()
    extensions = current_app.extensions
    limits = extensions[RATE_LIMITS]
    if limits is not None:
        address = request_globals.pop("rate_limit_address", None)
        # (keyed by address if a request ever got here without a user)
        counted = [(f"user:{user_id}" if user_id else address_key(request), limits.per_user)]
        if address is not None:
            counted.insert(0, (address, limits.per_ip))
        breached = limits.count(counted)
        if breached is not None:
            raise exceeded(breached)
    in_flight = extensions[IN_FLIGHT]
    if in_flight is not None and user_id:
        if not in_flight.enter(user_id):
            raise TooManyInFlight(in_flight.limit)
        request_globals.in_flight_user = user_id


def rate_limit_headers(response):
    """Count an address left uncounted (no `limit_user()`); X-RateLimit-* of the limit that applied.

    The limit shown is the per-user one on /api routes once the caller is
    known, the per-address one otherwise, and the one exceeded on a 429.
    """
    request_globals = g._get_current_object()
    limits = get_rate_limits()
    address = request_globals.pop("rate_limit_address", None)
    if address is not None:
        limits.count([(address, limits.per_ip)])  # too late to refuse: the next request is, before authentication
    shown = request_globals.get("rate_limit")
    if shown is not None and limits.headers_enabled:
        headers = response.headers  # only this function writes them: added, not set (no search for a duplicate)
        headers.add("X-RateLimit-Limit", str(shown.amount))
        headers.add("X-RateLimit-Remaining", str(shown.remaining))
        headers.add("X-RateLimit-Reset", str(math.ceil(shown.reset)))
    return response


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


def leave_in_flight(_exc=None):
    user_id = g.pop("in_flight_user", None)
    if user_id is not None:
        get_in_flight().leave(user_id)


def init_app(app):
    config = app.config
    if config["TRUSTED_PROXY_HOPS"]:
        # Only the address: the last N entries of X-Forwarded-For were written by our proxies;
        # anything before them came from the client and is not trusted.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config["TRUSTED_PROXY_HOPS"], x_proto=0, x_host=0, x_port=0)
    app.extensions[RATE_LIMITS] = None
    app.extensions[IN_FLIGHT] = None
    if not config["RATELIMIT_ENABLED"]:
        return
    if config["RATELIMIT_CONCURRENT_PER_USER"]:
        app.extensions[IN_FLIGHT] = InFlight(config["RATELIMIT_CONCURRENT_PER_USER"])
        app.teardown_request(leave_in_flight)
    app.extensions[RATE_LIMITS] = RateLimits(config)
    app.before_request(count_request)
    app.after_request(rate_limit_headers)
