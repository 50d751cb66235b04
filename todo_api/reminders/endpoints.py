"""Web Push subscriptions: what a browser's endpoint and keys must look like.

The web app imports this to validate subscriptions; sending a message is
`delivery`'s, which the web app never loads. Endpoints and keys are
capabilities: nothing here logs them or puts them in an exception's text.
"""

import base64
import binascii
import re
from ipaddress import ip_address
from urllib.parse import urlsplit

MAX_ENDPOINT_LENGTH = 2048
P256_POINT_LENGTH = 65  # an uncompressed point: 0x04, x, y
AUTH_SECRET_LENGTH = 16

BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
LOCAL_HOSTS = frozenset({"localhost", "localhost.localdomain"})


def b64url_encode(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text):
    """The bytes of base64url text with or without padding; None if it is not base64url."""
    unpadded = text.rstrip("=")
    padding = len(text) - len(unpadded)
    if not BASE64URL.fullmatch(unpadded) or len(unpadded) % 4 == 1:
        return None
    if padding and (padding > 2 or len(text) % 4):
        return None
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        return None


def endpoint_problem(url, allow_insecure=False):
    """Why `url` cannot be a push endpoint, or None.

    Push services hand out https URLs on a DNS name. Unless insecure endpoints
    are allowed (tests, with a push service on 127.0.0.1), http URLs, IP
    addresses and local host names are refused: the worker would otherwise
    POST wherever a user pointed it.
    """
    if len(url) > MAX_ENDPOINT_LENGTH:
        return f"Longer than maximum length {MAX_ENDPOINT_LENGTH}."
    if not (url.isascii() and url.isprintable()) or " " in url:
        return "Must be a URL of printable ASCII characters."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return "Must be a valid URL."
    schemes = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.fragment or "@" in parts.netloc:
        return "Must be an https URL." if not allow_insecure else "Must be an http or https URL."
    if not allow_insecure and not is_public_host_name(parts.hostname):
        return "Must be the URL of a push service on a DNS name, not an IP address or a local host."
    return None


def is_public_host_name(host):
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return "." in host.strip(".") and host not in LOCAL_HOSTS and not host.endswith(".localhost")
    return False


def p256dh_problem(text):
    """Why `text` is not a browser's P-256 public key, or None."""
    raw = b64url_decode(text)
    if raw is None:
        return "Must be base64url."
    if len(raw) != P256_POINT_LENGTH or raw[0] != 4:
        return "Must be an uncompressed P-256 public key (65 bytes starting with 0x04)."
    from cryptography.hazmat.primitives.asymmetric import ec  # loaded on the first subscription, not at start-up

    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        return "Must be a point on the P-256 curve."
    return None


def auth_problem(text):
    """Why `text` is not a subscription's authentication secret, or None."""
    raw = b64url_decode(text)
    if raw is None:
        return "Must be base64url."
    if len(raw) != AUTH_SECRET_LENGTH:
        return f"Must be {AUTH_SECRET_LENGTH} bytes."
    return None


def canonical_key(text):
    """A valid key as stored: base64url without padding."""
    return b64url_encode(b64url_decode(text))
