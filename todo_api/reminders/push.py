"""Sending one message to a browser's push service (RFC 8030), and the service's VAPID keys.

The message is encrypted for the subscription's keys with RFC 8291's
`aes128gcm` content encoding (pywebpush, on http_ece) and carries an RFC 8292
VAPID `Authorization` header signed with the service's key (py_vapid). The request itself is
made here, with requests: with a timeout, never following a redirect (an
endpoint is a URL a user gave us), and reading no more than a short body.
Nothing here logs or raises with an endpoint or a key in its text.
"""

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher

from todo_api.reminders.endpoints import b64url_encode

# How long a push service keeps a message for a browser that is offline.
TTL_SECONDS = 24 * 60 * 60
MAX_RETRY_AFTER = 24 * 60 * 60
# A push service answers with an empty or a short body; a longer one is not read, and its connection is dropped.
MAX_RESPONSE_BODY = 64 * 1024
# RFC 8292 allows a VAPID token to live up to 24 hours; one is signed per push
# service origin and renewed when less than an hour is left.
VAPID_TOKEN_LIFETIME = 12 * 60 * 60
VAPID_TOKEN_RENEWAL = 60 * 60


class VapidSettingError(RuntimeError):
    """A VAPID setting is missing or wrong; the message names the variable."""


def generate_vapid_keys():
    """A new key pair: (public key as base64url of the uncompressed point, private key as base64url of the
    raw 32-byte scalar), the forms the frontend's applicationServerKey and VAPID_PRIVATE_KEY take."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    scalar = private_key.private_numbers().private_value.to_bytes(32, "big")
    return public_key_text(private_key.public_key()), b64url_encode(scalar)


def public_key_text(public_key):
    return b64url_encode(
        public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


class VapidSigner:
    """Signs VAPID tokens with the service's key, one per push service origin, reused until near expiry."""

    def __init__(self, private_key, public_key, subject):
        for name, value in (
            ("VAPID_PRIVATE_KEY", private_key),
            ("VAPID_PUBLIC_KEY", public_key),
            ("VAPID_SUBJECT", subject),
        ):
            if not value:
                raise VapidSettingError(f"{name} is not set (`flask --app todo_api vapid-keys` makes a key pair)")
        try:
            self.vapid = Vapid.from_string(private_key)
        except Exception:  # noqa: BLE001 - whatever py_vapid or cryptography make of a bad key
            raise VapidSettingError(
                "VAPID_PRIVATE_KEY is not a valid key (expected base64url of a raw 32-byte P-256 private key)"
            ) from None
        if public_key_text(self.vapid.public_key) != public_key.rstrip("="):
            raise VapidSettingError("VAPID_PUBLIC_KEY is not the public key of VAPID_PRIVATE_KEY")
        if not subject.startswith(("mailto:", "https:")):
            raise VapidSettingError("VAPID_SUBJECT must be a mailto: address or an https: URL")
        self.subject = subject
        self._tokens = {}
        try:  # py_vapid's own checks of the subject, once
            self._sign("https://push.example.com", int(time.time()))
        except VapidException:
            raise VapidSettingError("VAPID_SUBJECT must be a mailto: address or an https: URL") from None

    def _sign(self, origin, now):
        claims = {"aud": origin, "exp": now + VAPID_TOKEN_LIFETIME, "sub": self.subject}
        return claims["exp"], self.vapid.sign(claims)["Authorization"]

    def authorization(self, origin, now=None):
        """The `Authorization` header for a push service at `origin` (scheme://host[:port])."""
        now = int(now or time.time())
        cached = self._tokens.get(origin)
        if cached is None or cached[0] - now < VAPID_TOKEN_RENEWAL:
            cached = self._tokens[origin] = self._sign(origin, now)
        return cached[1]


def signer_from_config(config):
    return VapidSigner(config["VAPID_PRIVATE_KEY"], config["VAPID_PUBLIC_KEY"], config["VAPID_SUBJECT"])


@dataclass(frozen=True)
class Outcome:
    """What became of one push.

    `kind`: `delivered` (the push service took it), `gone` (404/410: the
    subscription is dead), `retry` (429, 5xx, no connection, a timeout:
    try again later, after `retry_after` seconds if the service said),
    `rejected` (any other answer: this message will never be taken).
    `status` is the HTTP status, or the error's type name without one.
    """

    kind: str
    status: str
    retry_after: float | None = None


def classify(status, headers, now=None):
    if 200 <= status < 300:
        return Outcome("delivered", str(status))
    if status in (404, 410):
        return Outcome("gone", str(status))
    if status == 429 or status >= 500:
        return Outcome("retry", str(status), retry_after_seconds(headers.get("Retry-After"), now))
    return Outcome("rejected", str(status))


def retry_after_seconds(value, now=None):
    """Retry-After as seconds from now (it is either seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delay = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


class NoRedirects(requests.Session):
    """A session that never follows a redirect, and reads no body unless asked."""

    def request(self, method, url, **kwargs):
        kwargs["allow_redirects"] = False
        kwargs["stream"] = True
        return super().request(method, url, **kwargs)


def release(response):
    """Let a response's connection be used again: read a small body to its end, or drop the connection."""
    try:
        size = 0
        for chunk in response.iter_content(8192):
            size += len(chunk)
            if size > MAX_RESPONSE_BODY:
                break
    except requests.RequestException:
        pass
    finally:
        response.close()


class PushSender:
    """Encrypts and sends messages; safe to use from several threads (one HTTP session per thread)."""

    def __init__(self, signer, timeout):
        self.signer = signer
        self.timeout = timeout
        self._local = threading.local()
        self._sessions = []
        self._sessions_lock = threading.Lock()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = NoRedirects()
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def send(self, endpoint, p256dh, auth, payload, topic=None):
        """Push `payload` (bytes) to one subscription; returns an Outcome, never raises for the network."""
        subscription = {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}
        parts = urlsplit(endpoint)
        try:
            body = WebPusher(subscription).encode(payload, "aes128gcm")["body"]
            authorization = self.signer.authorization(f"{parts.scheme}://{parts.netloc}")
        except Exception as error:  # noqa: BLE001 - keys or an origin this message can never be sent with
            return Outcome("rejected", type(error).__name__)
        headers = {
            "Authorization": authorization,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(TTL_SECONDS),
            "Urgency": "high",
        }
        if topic:
            headers["Topic"] = topic  # a push service replaces an undelivered message of the same topic
        try:
            response = self._session().post(endpoint, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as error:
            return Outcome("retry", type(error).__name__)
        try:
            return classify(response.status_code, response.headers)
        finally:
            release(response)

    def close(self):
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
