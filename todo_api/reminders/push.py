"""Sending one message to a browser's push service (RFC 8030), and the service's VAPID keys.

The message is encrypted for the subscription's keys with RFC 8291's
`aes128gcm` content encoding (pywebpush, on http_ece) and carries an RFC 8292
VAPID `Authorization` header signed with the service's key (py_vapid). The
request is `outbound.post`: to public addresses only, within a total deadline,
following no redirect, reading no body. Nothing here logs or raises with an
endpoint or a key in its text.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher

from todo_api.reminders.endpoints import b64url_encode, endpoint_problem
from todo_api.reminders.outbound import Deadline, InFlight, RefusedAddress, post, system_resolve

# How long a push service keeps a message for a browser that is offline.
TTL_SECONDS = 24 * 60 * 60
MAX_RETRY_AFTER = 24 * 60 * 60
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
    subscription is dead), `retry` (429, 5xx, no connection, TLS, a timeout,
    an answer that is no HTTP: try again later, after `retry_after` seconds if
    the service said), `rejected` (any other answer, an endpoint that breaks
    the rules, a host with no public address, keys or a message it cannot be
    made with: this message will never be sent or taken).
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


class PushSender:
    """Encrypts and sends messages, one connection per push (see `outbound`); safe to use from several threads.

    `allow_insecure` is PUSH_ALLOW_INSECURE_ENDPOINTS; `resolve` and `ssl_context` stand for the system's
    resolver and trusted certificates (tests give their own)."""

    def __init__(self, signer, timeout, allow_insecure=False, resolve=system_resolve, ssl_context=None):
        self.signer = signer
        self.timeout = timeout
        self.allow_insecure = allow_insecure
        self.resolve = resolve
        self.ssl_context = ssl_context
        self.in_flight = InFlight()

    def send(self, endpoint, p256dh, auth, payload, topic=None):
        """Push `payload` (bytes) to one subscription; returns an Outcome, never raises.

        An endpoint that is not one to push to (`endpoint_problem`; a subscription stored before a rule was
        made), keys or an origin the message cannot be made with, and a host that leads to no public address
        are `rejected`: this message can never be sent. Whatever goes wrong on the way is `retry`."""
        if endpoint_problem(endpoint, self.allow_insecure):
            return Outcome("rejected", "InvalidEndpoint")
        try:
            parts = urlsplit(endpoint)
            subscription = {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}
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
            status, answer_headers = post(
                endpoint,
                body,
                headers,
                Deadline(self.timeout),
                allow_loopback=self.allow_insecure,
                resolve=self.resolve,
                ssl_context=self.ssl_context,
                in_flight=self.in_flight,
            )
        except RefusedAddress as error:
            return Outcome("rejected", type(error).__name__)
        except Exception as error:  # noqa: BLE001 - no connection, TLS, a timeout, a malformed answer: for later
            return Outcome("retry", type(error).__name__)
        return classify(status, answer_headers)

    def cut_in_flight(self):
        """End the pushes waiting for an answer now (they come out `retry`); returns how many there were."""
        return self.in_flight.cut()
