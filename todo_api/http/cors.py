"""CORS: which browser origins may call the API, by flask-cors.

Each `CORS_ORIGINS` entry is an origin taken literally (`https://app.example.com`;
compared whole, case-insensitively), a pattern written as one
(`regex:https://[a-z0-9-]+\\.example\\.com`, matched against the whole origin),
or `*` for any origin. flask-cors would read an entry holding `*` or another
regex character as an unanchored regular expression, so every entry is handed
to it already compiled and anchored at both ends.

Credentials are allowed unless `*` is among the entries. `Vary: Origin` is
added to every response by `web.py`, not here: flask-cors adds it only to some.
"""

import functools
import re

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
        body = re.escape(entry)
    # flask-cors calls `pattern.match`, which anchors only the start; `\Z` anchors the end.
    return re.compile(rf"(?:{body})\Z", re.IGNORECASE)


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
