"""Authentication against Better Auth's session table.

Better Auth hands a client the same credential in two forms:

- the raw session token, exactly as stored in `session.token`;
- the signed form `<token>.<signature>` that its bearer plugin returns in the
  `set-auth-token` header and that its session cookie holds, where the
  signature is standard base64 of HMAC-SHA256(BETTER_AUTH_SECRET, token),
  often URL-encoded.

Either may come in `Authorization: Bearer ...`; the cookie is read only when
there is no Authorization header, and only with BETTER_AUTH_SECRET set.
The session row is checked on every request, by the token's digest (see
token_digest.py), so a signed-out (deleted) or expired session is refused on
the very next request. On the task routes that check is folded into the
statement that does the work (`session_guard`): the user id it needs before
that statement runs (to key the rate limits, and to filter by) comes from
`KnownSessions`, which remembers only sessions the database has confirmed;
an unknown digest is looked up first (`session_lookup`). When the folded
statement finds nothing, or the request is refused before it runs, the
classic lookup tells a dead session (401, forgotten) from a missing task.
Tokens are never logged, whole or in part.
"""

import base64
import hashlib
import hmac
import logging
import threading
from collections import OrderedDict
from urllib.parse import unquote

from flask import current_app, g, request
from sqlalchemy import LargeBinary, MetaData, bindparam, exists, func, select
from sqlalchemy.sql import ColumnElement, Select
from werkzeug.exceptions import Unauthorized, UnsupportedMediaType

from todo_api.auth import token_digest
from todo_api.db.connections import execute_retrying_once
from todo_api.db.tables import session_table, unexpired
from todo_api.state import app_state, get_session_lookup

log = logging.getLogger(__name__)

SIGNATURE_LENGTH = 44  # base64 of a 32-byte HMAC-SHA256, with padding
MAX_TOKEN_LENGTH = 512
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class NotAuthenticated(Unauthorized):
    description = "Not authenticated"

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", "Bearer")]


def session_lookup(config) -> Select:
    """The one indexed query that turns a live session into a user id; its parameter is the token's digest.

    The token itself never appears in the SQL (see token_digest.py), so no
    database log can hold it. Expiry is checked by the database, against its
    own clock; connections run with timezone UTC, so an old Better Auth's naive
    `timestamp` column compares correctly too. Built once, by the app factory.
    """
    sessions = session_table(config, MetaData())
    token = sessions.c[config["SESSION_TOKEN_COLUMN"]]
    return select(sessions.c[config["SESSION_USER_ID_COLUMN"]]).where(
        getattr(func, token_digest.FUNCTION)(token) == bindparam("digest", type_=LargeBinary),
        unexpired(sessions.c[config["SESSION_EXPIRES_AT_COLUMN"]]),
    )


def session_guard(config) -> ColumnElement:
    """SQL: the session whose digest is bound as `digest` is live and is the session of `owner_id`.

    A task statement on the hot path carries it in its WHERE clause, so the
    session is checked in the same round trip as the work (`task_store`).
    """
    sessions = session_table(config, MetaData())
    token = sessions.c[config["SESSION_TOKEN_COLUMN"]]
    return exists().where(
        getattr(func, token_digest.FUNCTION)(token) == bindparam("digest", type_=LargeBinary),
        unexpired(sessions.c[config["SESSION_EXPIRES_AT_COLUMN"]]),
        sessions.c[config["SESSION_USER_ID_COLUMN"]] == bindparam("owner_id"),
    )


class KnownSessions:
    """A bounded LRU map from token digest to user id, of sessions the database confirmed.

    Only a key for the rate limits and the owner a statement filters by: every
    statement that uses it checks the session again (`session_guard`).
    """

    def __init__(self, size=10_000):
        self.size, self.users, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, digest):
        with self.lock:
            user_id = self.users.get(digest)
            if user_id is not None:
                self.users.move_to_end(digest)
            return user_id

    def remember(self, digest, user_id):
        with self.lock:
            self.users[digest] = user_id
            self.users.move_to_end(digest)
            if len(self.users) > self.size:
                self.users.popitem(last=False)

    def forget(self, digest):
        with self.lock:
            self.users.pop(digest, None)


def sign(token, secret):
    digest = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def session_token(credential, secret):
    """The session token a credential carries, or None if it cannot be trusted.

    A credential with a signature needs a secret to check it against; without
    one, the token part is looked up as it stands (in Better Auth's default
    configuration the raw token alone is a valid credential anyway).
    """
    credential = unquote(credential)
    token, dot, signature = credential.rpartition(".")
    if not dot:
        token, signature = credential, None
    if signature is not None and secret:
        expected = sign(token, secret)
        if len(signature) != SIGNATURE_LENGTH or not hmac.compare_digest(expected.encode(), signature.encode()):
            return None
    if not token or len(token) > MAX_TOKEN_LENGTH or not (token.isascii() and token.isprintable()):
        return None
    return token


def credential_from_request(config, current_request):
    """(credential, came_from_cookie) for the request; credential may be None."""
    header = current_request.environ.get("HTTP_AUTHORIZATION")
    if header is not None:
        scheme, _, credential = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return None, False
        return credential.strip(), False
    secret = config["BETTER_AUTH_SECRET"]
    if not secret:
        return None, False
    prefix = config["BETTER_AUTH_COOKIE_PREFIX"]
    cookies = current_request.cookies
    cookie = cookies.get(f"__Secure-{prefix}.session_token") or cookies.get(f"{prefix}.session_token")
    if not cookie or "." not in cookie:
        # Better Auth's cookie is always signed; an unsigned one is forged or stale.
        return None, True
    return cookie, True


def authenticate(deferred=False):
    """Set `g.user_id` from a live Better Auth session, or refuse the request.

    `deferred`: a session the database confirmed before (`KnownSessions`) is
    taken as the caller's without a lookup, and `g.session_digest` is set for
    the statement that checks it (`session_guard`); the route must then call
    `confirm_session` before it answers anything but that statement's rows.
    """
    app, current_request = current_app._get_current_object(), request._get_current_object()
    config = app.config
    credential, from_cookie = credential_from_request(config, current_request)
    token = credential and session_token(credential, config["BETTER_AUTH_SECRET"])
    if not token:
        log.info("rejected request: missing or malformed credential")
        raise NotAuthenticated()
    digest = token_digest.token_digest(token)
    forged_write = from_cookie and current_request.method in STATE_CHANGING_METHODS and not current_request.is_json
    user_id = app_state(app).known_sessions.get(digest) if deferred and not forged_write else None
    request_globals = g._get_current_object()
    request_globals.session_digest, request_globals.session_unconfirmed = digest, user_id is not None
    if user_id is None:
        user_id = lookup_session(digest)
    if forged_write:
        # A cross-site HTML form cannot send application/json, so this stops forged writes.
        raise UnsupportedMediaType("Requests authenticated by cookie that change data must be sent as application/json")
    request_globals.user_id = user_id


def lookup_session(digest):
    """The user id of the live session with this digest (remembered in `KnownSessions`); else 401."""
    user_id = execute_retrying_once(get_session_lookup(), {"digest": digest}).scalar()
    known = app_state().known_sessions
    if user_id is None:
        known.forget(digest)
        log.info("rejected request: unknown or expired session")
        raise NotAuthenticated()
    known.remember(digest, user_id)
    return user_id


def confirm_session():
    """After a deferred `authenticate`: make sure the session is live (401 if not) before answering otherwise."""
    if g.pop("session_unconfirmed", False):
        if lookup_session(g.session_digest) != g.user_id:
            raise NotAuthenticated()
