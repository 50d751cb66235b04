"""CORS: which browser origins may call the API, by flask-cors.

Each `CORS_ORIGINS` entry is an origin taken literally (`https://app.example.com`;
compared whole, case-insensitively), a pattern written as one
(`regex:https://[a-z0-9-]+\\.example\\.com`, matched against the whole origin),
or `*` for any origin. flask-cors would read an entry holding `*` or another
regex character as an unanchored regular expression, so every entry is handed
to it already compiled and anchored at both ends.

Credentials are allowed unless `*` is among the entries. `Vary: Origin` is
added to every response by `web.py`, not here: flask-cors adds it only to some.
With no entry (the default outside development, see mode.py), no response
carries a CORS header: no browser page of another origin may read any answer.

A literal entry must be an origin as browsers send it, `scheme://host[:port]`:
one with a path (a trailing slash included), a query or user info would never
match, and is refused at start-up, naming CORS_ORIGINS.
"""

import functools
import re
from urllib.parse import urlsplit

from flask import request
from flask_cors import CORS

from todo_api.ratelimit import limits as ratelimit

ANY_ORIGIN = "*"
PATTERN_PREFIX = "regex:"


def origin_pattern(entry):
    """The compiled, anchored pattern of one CORS_ORIGINS entry; a RuntimeError names a bad one."""
    if entry.startswith(PATTERN_PREFIX):
        body = entry.removeprefix(PATTERN_PREFIX)
        try:
            re.compile(body)
        except re.error as error:
            raise RuntimeError(f"CORS_ORIGINS has an invalid pattern {entry!r}: {error}") from None
    else:
        check_origin(entry)
        body = re.escape(entry)
    # flask-cors calls `pattern.match`, which anchors only the start; `\Z` anchors the end.
    return re.compile(rf"(?:{body})\Z", re.IGNORECASE)


def is_origin(entry):
    """Whether a literal CORS_ORIGINS entry is `scheme://host[:port]`, as a browser's Origin header is."""
    try:
        parts = urlsplit(entry)
        parts.port  # noqa: B018 - a port that is not a number fails here
    except ValueError:
        return False
    has_more = parts.username is not None or parts.path or parts.query or parts.fragment or entry.endswith(("?", "#"))
    return bool(parts.scheme and parts.hostname) and not has_more


def check_origin(entry):
    if not is_origin(entry):
        raise RuntimeError(
            f"CORS_ORIGINS has an invalid origin {entry!r}: an origin is scheme://host or scheme://host:port, "
            "with nothing after it"
        )


def allowed_origins(entries):
    """What flask-cors is given for these entries: `*` as is, every other entry as an anchored pattern."""
    return [entry if entry == ANY_ORIGIN else origin_pattern(entry) for entry in entries]


def only_with_origin(answer_cors):
    """flask-cors's after-request function, run only for requests that carry an Origin (a browser's cross-origin
    requests and preflights always do): for the others it would answer nothing, at a cost on every request."""

    @functools.wraps(answer_cors)
    def after_request(response):
        return answer_cors(response) if "HTTP_ORIGIN" in request.environ else response

    return after_request


def init_app(app):
    entries = app.config["CORS_ORIGINS"]
    if not entries:
        return
    # The browser shows a script only the response headers exposed here: ETag for
    # If-Match, the rate-limit headers (Retry-After on a 429).
    CORS(
        app,
        origins=allowed_origins(entries),
        supports_credentials=ANY_ORIGIN not in entries,
        max_age=600,
        expose_headers=["ETag", "Idempotent-Replayed", *ratelimit.HEADERS],
        vary_header=False,
        always_send=False,  # no Origin, no CORS headers
    )
    after_request = app.after_request_funcs[None]
    after_request.append(only_with_origin(after_request.pop()))  # the function CORS() has just registered
