"""Settings, read once from environment variables with safe defaults.

Every variable is documented in docs/configuration.md. A malformed value stops the app with a RuntimeError
that names the variable (and never repeats a URL, which may hold a password). A few defaults depend on the mode
the app runs in (see mode.py): those settings are None here when unset.
"""

import os

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Allowed when CORS_ORIGINS is unset, in development only (the Next.js frontend's development server).
DEVELOPMENT_CORS_ORIGINS = ["http://localhost:3000"]
# A variable each of these platforms sets in every process it runs (Heroku: DYNO; Render: RENDER). Their web
# processes are reached only through the platform's router, which appends the address of its own client to
# X-Forwarded-For: where one of them is set, TRUSTED_PROXY_HOPS defaults to 1.
PLATFORM_ROUTER_VARIABLES = ("DYNO", "RENDER")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DATABASE_DRIVERS = ("postgres", "postgresql", "postgresql+psycopg2", "sqlite", "sqlite+pysqlite")
REDIS_SCHEMES = ("redis", "rediss", "unix")
# Generous for people (a user's browser tabs, an office behind one address), well under what one
# client would need to crowd others out of a ~2,000 req/s service.
DEFAULT_RATELIMIT_PER_USER = "1800 per minute"
DEFAULT_RATELIMIT_PER_IP = "6000 per minute"
# Requests of one user running at once in one worker process (more wait for a place): under the database pool's
# connections, so that one user's requests never hold all of them.
DEFAULT_CONCURRENT_PER_USER = 3
# How long a request waits for one of its user's places, or for the worker's heavy slot, before it is refused.
DEFAULT_WAIT_SECONDS = 5
# KiB of /api response bodies per user: a user listing 1,000 tasks (about 1 MB) a hundred times a minute stays
# under it; several users pulling 1 MB pages as fast as they can do not crowd out the others for long.
DEFAULT_RATELIMIT_KIB_PER_USER = "131072 per minute"
# The docs page is 1.7 MB of Swagger UI and a handful of files per view; its files are cached a day.
DEFAULT_RATELIMIT_DOCS = "60 per minute"
MAX_REMINDER_LEAD_MINUTES = 30 * 24 * 60
# A push's whole deadline (resolve, connect, TLS, send, answer). At most a minute: a batch stops starting pushes
# 2.5 minutes into its 5-minute lease, so every push of it has ended before the lease does.
MAX_PUSH_TIMEOUT_SECONDS = 60
# A person's browsers and devices, with room for some that went away without unsubscribing; past it, subscribing
# another drops the least recently refreshed.
DEFAULT_SUBSCRIPTIONS_PER_USER = 10
# Pushes (connections to push services) for one user in one pass of the reminder worker; a user's first
# reminder of a pass always goes, further ones wait for the next pass past it.
DEFAULT_PUSHES_PER_USER = 50


def env_str(name, default=None):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def env_int(name, default, minimum=0, maximum=None):
    raw = env_str(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise RuntimeError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise RuntimeError(f"{name} must be at most {maximum}, got {value}")
    return value


def env_bool(name, default):
    raw = env_str(name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise RuntimeError(f"{name} must be true or false, got {raw!r}")


def env_list(name, default=None):
    raw = env_str(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name, default, choices):
    """One of `choices` (their case), given in any case."""
    raw = env_str(name)
    if raw is None:
        return default
    if raw.upper() not in choices:
        raise RuntimeError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw.upper()


def env_database_url(name):
    """A Postgres or SQLite URL, as given; checked here so that a bad one is named, not echoed."""
    raw = env_str(name)
    if raw is None:
        return None
    try:
        url = make_url(raw)
        url.port  # noqa: B018 - a port that is not a number fails here
    except (ArgumentError, ValueError):
        raise RuntimeError(
            f"{name} is not a database URL: postgres://user:password@host:5432/name or sqlite:///path"
        ) from None
    if url.drivername not in DATABASE_DRIVERS:
        raise RuntimeError(
            f"{name} must be a postgres://, postgresql:// or postgresql+psycopg2:// URL or a sqlite:/// path, "
            f"got a {url.drivername}:// URL"
        )
    return raw


def env_redis_url(name):
    raw = env_str(name)
    if raw is not None and raw.partition("://")[0].lower() not in REDIS_SCHEMES:
        raise RuntimeError(f"{name} must be a redis://, rediss:// or unix:// URL")
    return raw


def platform_proxy_hops():
    """1 on a platform that puts its router in front of every web process (PLATFORM_ROUTER_VARIABLES), else 0."""
    return 1 if any(env_str(name) for name in PLATFORM_ROUTER_VARIABLES) else 0


def from_environment():
    """The app's configuration as a dict of Flask config keys."""
    return {
        # Unset: SQLite in `instance/`, except in production, which refuses to start without it.
        "DATABASE_URL": env_database_url("DATABASE_URL"),
        "DATABASE_MIGRATION_URL": env_database_url("DATABASE_MIGRATION_URL"),
        "DATABASE_POOL_SIZE": env_int("DATABASE_POOL_SIZE", 5, minimum=1),
        "DATABASE_MAX_OVERFLOW": env_int("DATABASE_MAX_OVERFLOW", 5),
        "DATABASE_POOL_TIMEOUT": env_int("DATABASE_POOL_TIMEOUT", 5, minimum=1),
        "DATABASE_POOL_PRE_PING": env_bool("DATABASE_POOL_PRE_PING", False),
        "DATABASE_CONNECT_TIMEOUT": env_int("DATABASE_CONNECT_TIMEOUT", 3, minimum=1),
        "DATABASE_STATEMENT_TIMEOUT_MS": env_int("DATABASE_STATEMENT_TIMEOUT_MS", 5000),
        "SEARCH_STATEMENT_TIMEOUT_MS": env_int("SEARCH_STATEMENT_TIMEOUT_MS", 1000),
        "RESPONSE_MAX_BYTES": env_int("RESPONSE_MAX_BYTES", 1024 * 1024, minimum=1),
        # How long `GET /api/tasks/changes` remembers changes (deletions included); an older token is 410.
        "SYNC_RETENTION_DAYS": env_int("SYNC_RETENTION_DAYS", 30, minimum=1),
        "SECRET_KEY": env_str("SECRET_KEY"),
        "BETTER_AUTH_SECRET": env_str("BETTER_AUTH_SECRET"),
        "BETTER_AUTH_COOKIE_PREFIX": env_str("BETTER_AUTH_COOKIE_PREFIX", "better-auth"),
        "SESSION_TABLE": env_str("SESSION_TABLE", "session"),
        "SESSION_TOKEN_COLUMN": env_str("SESSION_TOKEN_COLUMN", "token"),
        "SESSION_USER_ID_COLUMN": env_str("SESSION_USER_ID_COLUMN", "userId"),
        "SESSION_EXPIRES_AT_COLUMN": env_str("SESSION_EXPIRES_AT_COLUMN", "expiresAt"),
        # Unset: DEVELOPMENT_CORS_ORIGINS in development, no origin otherwise (see create_app).
        "CORS_ORIGINS": env_list("CORS_ORIGINS"),
        "LOG_LEVEL": env_choice("LOG_LEVEL", "INFO", LOG_LEVELS),
        "DOCS_ENABLED": env_bool("DOCS_ENABLED", True),
        "RATELIMIT_ENABLED": env_bool("RATELIMIT_ENABLED", True),
        "RATELIMIT_PER_USER": env_str("RATELIMIT_PER_USER", DEFAULT_RATELIMIT_PER_USER),
        "RATELIMIT_PER_IP": env_str("RATELIMIT_PER_IP", DEFAULT_RATELIMIT_PER_IP),
        "RATELIMIT_CONCURRENT_PER_USER": env_int("RATELIMIT_CONCURRENT_PER_USER", DEFAULT_CONCURRENT_PER_USER),
        "RATELIMIT_WAIT_SECONDS": env_int("RATELIMIT_WAIT_SECONDS", DEFAULT_WAIT_SECONDS, minimum=1),
        "RATELIMIT_KIB_PER_USER": env_str("RATELIMIT_KIB_PER_USER", DEFAULT_RATELIMIT_KIB_PER_USER),
        "RATELIMIT_DOCS": env_str("RATELIMIT_DOCS", DEFAULT_RATELIMIT_DOCS),
        "RATELIMIT_HEADERS_ENABLED": env_bool("RATELIMIT_HEADERS_ENABLED", True),
        "RATELIMIT_KEY_PREFIX": env_str("RATELIMIT_KEY_PREFIX", "todo-api"),
        "REDIS_URL": env_redis_url("REDIS_URL"),
        "TRUSTED_PROXY_HOPS": env_int("TRUSTED_PROXY_HOPS", platform_proxy_hops()),
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        # Web Push reminders (the worker: `flask --app todo_api reminders run`).
        "VAPID_PRIVATE_KEY": env_str("VAPID_PRIVATE_KEY"),
        "VAPID_PUBLIC_KEY": env_str("VAPID_PUBLIC_KEY"),
        "VAPID_SUBJECT": env_str("VAPID_SUBJECT"),
        "REMINDER_POLL_SECONDS": env_int("REMINDER_POLL_SECONDS", 30, minimum=1),
        "REMINDER_LEAD_MINUTES": env_int("REMINDER_LEAD_MINUTES", 60, maximum=MAX_REMINDER_LEAD_MINUTES),
        "REMINDER_BATCH_SIZE": env_int("REMINDER_BATCH_SIZE", 100, minimum=1),
        "REMINDER_PUSH_THREADS": env_int("REMINDER_PUSH_THREADS", 8, minimum=1),
        "REMINDER_PUSHES_PER_USER": env_int("REMINDER_PUSHES_PER_USER", DEFAULT_PUSHES_PER_USER, minimum=1),
        "PUSH_TIMEOUT_SECONDS": env_int("PUSH_TIMEOUT_SECONDS", 10, minimum=1, maximum=MAX_PUSH_TIMEOUT_SECONDS),
        "PUSH_SUBSCRIPTIONS_PER_USER": env_int(
            "PUSH_SUBSCRIPTIONS_PER_USER", DEFAULT_SUBSCRIPTIONS_PER_USER, minimum=1
        ),
        "PUSH_ALLOW_INSECURE_ENDPOINTS": env_bool("PUSH_ALLOW_INSECURE_ENDPOINTS", False),
    }
