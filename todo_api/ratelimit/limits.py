"""Rate limits per client address and per user, and each user's budget of response bytes, counted by `limits`.

Four limits, all fixed windows of the `limits` package (a window starts with
its first count and lasts the limit's period):

- per client address (`RATELIMIT_PER_IP`): every route except `/health` and
  CORS preflights, unknown paths included.
- per user (`RATELIMIT_PER_USER`): the `/api` routes, counted by `limit_user()`
  right after authentication, keyed by the caller's user id (by address if a
  request ever gets there without a user).
- per client address on the documentation (`RATELIMIT_DOCS`): `/docs`, its
  files and `/openapi.json` share one budget, tighter than the general one:
  the page is a 1.7 MB bundle, served to anyone.
- per user, in KiB of `/api` response bodies (`RATELIMIT_KIB_PER_USER`): each
  response is charged what it cost, its body's size, once it is made. A user
  whose budget is spent is refused by this worker until the window ends.

Outside `/api` the address is counted in `before_request`. On `/api` it is
counted together with the user, after authentication; before authentication,
an address this process has seen use up its budget is refused at once, until
its window ends, so a client guessing tokens gets no session lookup once its
budget is spent. A request that never gets as far as `limit_user()` (a 401, a
503 during authentication, an unknown `/api` path) has its address counted
when its response is made.

Counters live in Redis when `REDIS_URL` is set (`limits`' RedisStorage), so
the limits hold across gunicorn workers and instances; otherwise in each
worker's memory. When Redis fails (no answer within 0.25 s, a refused
connection, an error reply), the worker counts in memory instead (per worker,
with the same limits) and tries Redis again after 1, 2, 4 ... 32 seconds; any
other error of the limiter is logged and the request is served. Rate limiting
never turns a request into an error of its own.

Limit strings are parsed once, when the app is made, by `limits`
(`600 per minute`, `10/second`, `100 per minute; 2000 per hour`).
"""

import logging
import math
import threading
import time
from typing import NamedTuple

import limits.storage
import redis
from flask import current_app, g, request
from limits import parse_many
from limits.strategies import FixedWindowRateLimiter
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
# Windows that ended are dropped from memory at most this often.
SWEEP_SECONDS = 10
EXEMPT_ENDPOINTS = frozenset({"health.health"})
DOCS_BLUEPRINT = "openapi"
# Routes under this prefix are counted per user after authentication, their address with it.
USER_LIMITED_PREFIX = "/api/"
HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"]
KIB = 1024
# Responses this long or longer are charged to their user's budget of response bytes. Shorter ones cost about what
# any request does, and the per-user limit on requests bounds them (1,800 a minute by default).
CHARGED_FROM_BYTES = 64 * KIB


def address_key(current_request):
    """The client's IP address as a counter key; behind TRUSTED_PROXY_HOPS proxies, the one they saw."""
    return f"ip:{current_request.remote_addr or 'unknown'}"


class RateLimitExceeded(TooManyRequests):
    pass


class Limit:
    """A limit setting, parsed once: its `limits` items (all must hold) and the detail of its 429.

    Counters are keyed `LIMITS:LIMITER/<prefix>/<who>/<scope>/<amount>/<multiples>/<granularity>` in Redis
    (Flask-Limiter's keys, so counters in a shared Redis carried over).
    """

    def __init__(self, setting, value, scope, whose, unit=""):
        try:
            self.items = tuple(sorted(parse_many(value), key=lambda item: item.get_expiry()))
        except ValueError:
            raise RuntimeError(f"{setting} must be a rate limit such as '600 per minute', got {value!r}") from None
        self.scope = scope
        shown = "; ".join(f"{item.amount}{unit} per {item.multiples} {item.GRANULARITY.name}" for item in self.items)
        self.message = f"Rate limit exceeded: {shown} {whose}"


class MemoryWindows(limits.storage.Storage):
    """Fixed windows in this process's memory, behind one lock, for `limits`' strategies.

    limits' own MemoryStorage drops ended windows in a thread it starts again
    every 10 ms while requests come, walking every key each time: at 1,000
    counts a second that took 18% of a core with 20,000 other live windows
    (client addresses seen in the last minute) and 68% with 100,000, against
    2% here (`bench/counters.py sweep`). Here ended windows are dropped every
    SWEEP_SECONDS, and a window that ended counts from zero when next counted.
    """

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.windows = {}  # key -> [count, end as a Unix time]
        self.next_sweep = 0.0
        self.clock = time.time

    @property
    def base_exceptions(self):
        return ValueError

    def incr(self, key, expiry, amount=1):
        now = self.clock()
        with self.lock:
            if now >= self.next_sweep:
                self.sweep(now)
            window = self.windows.get(key)
            if window is None or window[1] <= now:
                window = self.windows[key] = [0, now + expiry]
            window[0] += amount
            return window[0]

    def get(self, key):
        window = self.windows.get(key)
        return window[0] if window is not None and window[1] > self.clock() else 0

    def get_expiry(self, key):
        window = self.windows.get(key)
        return window[1] if window is not None else self.clock()

    def sweep(self, now):
        self.windows = {key: window for key, window in self.windows.items() if window[1] > now}
        self.next_sweep = now + SWEEP_SECONDS

    def check(self):
        return True

    def reset(self):
        with self.lock:
            count, self.windows = len(self.windows), {}
        return count

    def clear(self, key):
        with self.lock:
            self.windows.pop(key, None)


class Counters:
    """limits' fixed windows, in Redis when configured and answering, else in this process's memory."""

    def __init__(self, redis_url):
        self.memory = FixedWindowRateLimiter(MemoryWindows())
        self.redis = None
        if redis_url:
            storage = limits.storage.RedisStorage(
                redis_url,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),  # a failure goes to memory at once, never retried with backoff
            )
            self.redis = FixedWindowRateLimiter(storage)
        self.redis_down = False
        self.retry_at = 0.0
        self.retry_delay = 1
        self.lock = threading.Lock()
        self.clock = time.monotonic

    def hit(self, item, key, cost=1):
        """Count `cost` in `item`'s window of `key`; True while the window holds."""
        if self.redis is None:
            return self.memory.hit(item, key, cost=cost)
        return self.run(FixedWindowRateLimiter.hit, item, key, cost=cost)

    def stats(self, item, key):
        """`item`'s window of `key`: (reset as a Unix time, remaining)."""
        if self.redis is None:
            return self.memory.get_window_stats(item, key)
        return self.run(FixedWindowRateLimiter.get_window_stats, item, key)

    def run(self, operation, *args, **kwargs):
        """`operation` on Redis's limiter, or on memory's while Redis is down or when it fails."""
        if self.redis_down and not self.retry_due():
            return operation(self.memory, *args, **kwargs)
        try:
            result = operation(self.redis, *args, **kwargs)
        except (redis.RedisError, OSError) as error:
            self.failed(error)
            return operation(self.memory, *args, **kwargs)
        if self.redis_down:
            self.redis_down = False
            self.retry_delay = 1
            log.info("rate limit counters: Redis answers again; counting there")
        return result

    def retry_due(self):
        """True for the one request that tries Redis again once the delay is over (the others keep to memory)."""
        now = self.clock()
        with self.lock:
            if now < self.retry_at:
                return False
            self.postpone(now)
            return True

    def failed(self, error):
        with self.lock:
            if self.redis_down:
                return
            self.redis_down = True
            self.postpone(self.clock())
        log.warning("rate limit counters: Redis failed (%s); counting in memory", type(error).__name__)

    def postpone(self, now):
        self.retry_at = now + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, REDIS_RETRY_MAX_SECONDS)


class Standing(NamedTuple):
    """Where a request leaves one window: what the X-RateLimit-* headers say."""

    amount: int
    remaining: int
    reset: float  # Unix time when the window ends
    exceeded: bool

    def tighter_than(self, other):
        """Of a limit's windows, the headers show an exceeded one (the last to end), else the fewest remaining."""
        if self.exceeded:
            return not other.exceeded or self.reset > other.reset
        return not other.exceeded and self.remaining < other.remaining


class RateLimits:
    """The limits of one app and their counters."""

    def __init__(self, config):
        self.per_ip = Limit("RATELIMIT_PER_IP", config["RATELIMIT_PER_IP"], "ip", "per client address")
        self.per_user = Limit("RATELIMIT_PER_USER", config["RATELIMIT_PER_USER"], "user", "per user")
        self.docs = Limit("RATELIMIT_DOCS", config["RATELIMIT_DOCS"], "docs", "per client address on the documentation")
        self.response_kib = Limit(
            "RATELIMIT_KIB_PER_USER", config["RATELIMIT_KIB_PER_USER"], "kib", "per user", unit=" KiB of responses"
        )
        self.key_prefix = config["RATELIMIT_KEY_PREFIX"]
        self.headers_enabled = config["RATELIMIT_HEADERS_ENABLED"]
        self.counters = Counters(config["REDIS_URL"])
        self.blocked = {}  # address key -> its exceeded Standing: refused before authentication until its reset
        self.spent = {}  # user id -> the Standing of their spent response budget, refused until its reset

    def count(self, counted, cost=1):
        """Count this request (as `cost` requests) against each (key, limit) in `counted`; the first limit it
        exceeds, or None.

        Sets `g.rate_limit` to what the headers show: the limit exceeded, or else the last of `counted`.
        """
        request_globals = g._get_current_object()
        last = len(counted) - 1
        try:
            for index, (key, limit) in enumerate(counted):
                held = [self.counters.hit(item, self.key(key, limit), cost=cost) for item in limit.items]
                if all(held) and (index < last or not self.headers_enabled):
                    continue
                request_globals.rate_limit = shown = self.standing(key, limit, held)
                if shown.exceeded:
                    if limit is self.per_ip:
                        self.blocked[key] = shown
                    return limit
        except Exception as error:  # noqa: BLE001 - a limiter failure must not fail the request
            log.error("rate limit not counted: %s", type(error).__name__)
        return None

    def key(self, key, limit):
        return f"{self.key_prefix}/{key}/{limit.scope}"

    def standing(self, key, limit, held):
        """What the headers show of `limit` for `key`, `held` telling which of its windows held."""
        shown = None
        for item, holds in zip(limit.items, held, strict=True):
            reset, remaining = self.counters.stats(item, self.key(key, limit))
            standing = Standing(item.amount, remaining, reset, not holds)
            if shown is None or standing.tighter_than(shown):
                shown = standing
        return shown

    def refuse_if_blocked(self, address):
        """429 for an address that used up its budget in this process, without counting (before authentication)."""
        shown = self.blocked.get(address)
        if shown is None:
            return
        if shown.reset > time.time():
            g.rate_limit = shown
            raise exceeded(self.per_ip)
        self.blocked.pop(address, None)

    def refuse_if_spent(self, user_id):
        """429 for a user whose response budget this process saw spent, until its window ends."""
        shown = self.spent.get(user_id)
        if shown is None:
            return
        if shown.reset > time.time():
            g.rate_limit = shown
            raise exceeded(self.response_kib)
        self.spent.pop(user_id, None)

    def charge(self, user_id, body_bytes):
        """Charge a response of `body_bytes` to its user's budget, in KiB, if it is CHARGED_FROM_BYTES or more."""
        if body_bytes < CHARGED_FROM_BYTES:
            return
        kib = body_bytes // KIB
        key, budget = f"user:{user_id}", self.response_kib
        try:
            held = [self.counters.hit(item, self.key(key, budget), cost=kib) for item in budget.items]
            if not all(held):
                self.spent[user_id] = self.standing(key, budget, held)
        except Exception as error:  # noqa: BLE001 - a limiter failure must not fail the request
            log.error("response budget not charged: %s", type(error).__name__)


def exceeded(limit):
    return RateLimitExceeded(limit.message, retry_after=max(1, math.ceil(g.rate_limit.reset - time.time())))


RATE_LIMITS = "todo_api.rate_limits"


def get_rate_limits(app=None):
    """The app's rate-limit counters (None when rate limits are off)."""
    return (app or current_app).extensions[RATE_LIMITS]


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


def count_more_requests(user_id, more):
    """Count `more` requests of the caller's beside this one against their per-user limit (a batch counts as one
    request per operation); 429 when it is used up."""
    limits = current_app.extensions[RATE_LIMITS]
    if limits is None or more <= 0:
        return
    breached = limits.count([(f"user:{user_id}", limits.per_user)], cost=more)
    if breached is not None:
        raise exceeded(breached)


def limit_user(user_id):
    """Count this request against the caller's per-user limit (and its address's); 429 when one is used up, or
    when the caller's response budget is.

    Call it after authentication, with the caller's user id.
    """
    limits = current_app.extensions[RATE_LIMITS]
    if limits is None:
        return
    request_globals = g._get_current_object()
    address = request_globals.pop("rate_limit_address", None)
    # (keyed by address if a request ever got here without a user)
    counted = [(f"user:{user_id}" if user_id else address_key(request), limits.per_user)]
    if address is not None:
        counted.insert(0, (address, limits.per_ip))
    breached = limits.count(counted)
    if breached is not None:
        raise exceeded(breached)
    if user_id:
        limits.refuse_if_spent(user_id)
        request_globals.charged_user = user_id


def rate_limit_headers(response):
    """Count an address left uncounted (no `limit_user()`); charge the response to its user's budget; X-RateLimit-*
    of the limit that applied.

    The limit shown is the per-user one on /api routes once the caller is
    known, the per-address one otherwise, and the one exceeded on a 429.
    """
    request_globals = g._get_current_object()
    limits = get_rate_limits()
    address = request_globals.pop("rate_limit_address", None)
    if address is not None:
        limits.count([(address, limits.per_ip)])  # too late to refuse: the next request is, before authentication
    user_id = request_globals.pop("charged_user", None)
    if user_id is not None:
        limits.charge(user_id, response.content_length or 0)
    shown = request_globals.get("rate_limit")
    if shown is not None and limits.headers_enabled:
        headers = response.headers  # only this function writes them: added, not set (no search for a duplicate)
        headers.add("X-RateLimit-Limit", str(shown.amount))
        headers.add("X-RateLimit-Remaining", str(shown.remaining))
        headers.add("X-RateLimit-Reset", str(math.ceil(shown.reset)))
    return response


def init_app(app):
    config = app.config
    if config["TRUSTED_PROXY_HOPS"]:
        # Only the address: the last N entries of X-Forwarded-For were written by our proxies;
        # anything before them came from the client and is not trusted.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config["TRUSTED_PROXY_HOPS"], x_proto=0, x_host=0, x_port=0)
    app.extensions[RATE_LIMITS] = None
    if not config["RATELIMIT_ENABLED"]:
        return
    app.extensions[RATE_LIMITS] = RateLimits(config)
    app.before_request(count_request)
    app.after_request(rate_limit_headers)
