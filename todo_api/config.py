"""Settings, read once from environment variables with safe defaults.

Every variable is documented in the README's configuration table.
"""

import os

DEFAULT_CORS_ORIGINS = "http://localhost:3000"
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


def env_list(name, default):
    raw = env_str(name, default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def from_environment():
    """The app's configuration as a dict of Flask config keys."""
    return {
        "DATABASE_URL": env_str("DATABASE_URL"),
        "DATABASE_MIGRATION_URL": env_str("DATABASE_MIGRATION_URL"),
        "DATABASE_POOL_SIZE": env_int("DATABASE_POOL_SIZE", 5, minimum=1),
        "DATABASE_MAX_OVERFLOW": env_int("DATABASE_MAX_OVERFLOW", 5),
        "DATABASE_POOL_TIMEOUT": env_int("DATABASE_POOL_TIMEOUT", 5, minimum=1),
        "DATABASE_POOL_PRE_PING": env_bool("DATABASE_POOL_PRE_PING", False),
        "DATABASE_CONNECT_TIMEOUT": env_int("DATABASE_CONNECT_TIMEOUT", 3, minimum=1),
        "DATABASE_STATEMENT_TIMEOUT_MS": env_int("DATABASE_STATEMENT_TIMEOUT_MS", 5000),
        "SEARCH_STATEMENT_TIMEOUT_MS": env_int("SEARCH_STATEMENT_TIMEOUT_MS", 1000),
        "RESPONSE_MAX_BYTES": env_int("RESPONSE_MAX_BYTES", 1024 * 1024, minimum=1),
        "SECRET_KEY": env_str("SECRET_KEY"),
        "BETTER_AUTH_SECRET": env_str("BETTER_AUTH_SECRET"),
        "BETTER_AUTH_COOKIE_PREFIX": env_str("BETTER_AUTH_COOKIE_PREFIX", "better-auth"),
        "SESSION_TABLE": env_str("SESSION_TABLE", "session"),
        "SESSION_TOKEN_COLUMN": env_str("SESSION_TOKEN_COLUMN", "token"),
        "SESSION_USER_ID_COLUMN": env_str("SESSION_USER_ID_COLUMN", "userId"),
        "SESSION_EXPIRES_AT_COLUMN": env_str("SESSION_EXPIRES_AT_COLUMN", "expiresAt"),
        "CORS_ORIGINS": env_list("CORS_ORIGINS", DEFAULT_CORS_ORIGINS),
        "LOG_LEVEL": env_str("LOG_LEVEL", "INFO").upper(),
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
        "REDIS_URL": env_str("REDIS_URL"),
        "TRUSTED_PROXY_HOPS": env_int("TRUSTED_PROXY_HOPS", 0),
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        # Web Push reminders (the worker: `flask --app todo_api reminders run`).
        "VAPID_PRIVATE_KEY": env_str("VAPID_PRIVATE_KEY"),
        "VAPID_PUBLIC_KEY": env_str("VAPID_PUBLIC_KEY"),
        "VAPID_SUBJECT": env_str("VAPID_SUBJECT"),
        "REMINDER_POLL_SECONDS": env_int("REMINDER_POLL_SECONDS", 30, minimum=1),
        "REMINDER_LEAD_MINUTES": env_int("REMINDER_LEAD_MINUTES", 60, maximum=MAX_REMINDER_LEAD_MINUTES),
        "REMINDER_BATCH_SIZE": env_int("REMINDER_BATCH_SIZE", 100, minimum=1),
        "REMINDER_PUSH_THREADS": env_int("REMINDER_PUSH_THREADS", 8, minimum=1),
        "PUSH_TIMEOUT_SECONDS": env_int("PUSH_TIMEOUT_SECONDS", 10, minimum=1),
        "PUSH_ALLOW_INSECURE_ENDPOINTS": env_bool("PUSH_ALLOW_INSECURE_ENDPOINTS", False),
    }
