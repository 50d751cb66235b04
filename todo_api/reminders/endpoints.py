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

MAX_HOST_LENGTH = 253
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
TOP_LEVEL_DOMAIN = re.compile(r"[a-z]{2,63}")
NUMBER_LABEL = re.compile(r"0x[0-9a-f]*")
# Names that never lead to the public internet: special-use (RFC 6761, 6762, 7686, 8375, 9476), the
# infrastructure domain, and the private-use ones in common use.
LOCAL_TOP_LEVEL_DOMAINS = frozenset(
    {
        "localhost",
        "local",
        "localdomain",
        "test",
        "invalid",
        "example",
        "onion",
        "alt",
        "arpa",
        "internal",
        "home",
        "lan",
        "corp",
        "intranet",
        "private",
    }
)
PUBLIC_HOST = "Must be the URL of a push service on a DNS name, not an IP address or a local host."
DNS_NAME = (
    "Must be the URL of a push service on a valid DNS name: labels of 1 to 63 letters, digits or hyphens, "
    "253 characters in all."
)


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

    Push services hand out https URLs on public DNS names. Refused: any other
    scheme, user info, a fragment, and every host that is not a valid public DNS
    name (`host_problem`). With `allow_insecure` (tests, and a push service of
    one's own on this machine), http too, and the loopback hosts `localhost`,
    127.x.y.z and [::1], written plainly; never another address.
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
    return host_problem(parts.hostname, parts.netloc.startswith("["), allow_insecure)


def host_problem(host, bracketed=False, allow_insecure=False):
    """Why an endpoint's host (as `urlsplit` gives it: lower case, without brackets) is not one to push to."""
    if allow_insecure and is_loopback_host(host):
        return None
    if bracketed or is_address_like(host) or is_local_name(host):
        return PUBLIC_HOST
    if not is_dns_name(host):
        return DNS_NAME
    return None


def is_loopback_host(host):
    """`localhost`, or a loopback address written as `ip_address` writes it: 127.0.0.1 (any of 127.0.0.0/8) or
    ::1, and no other notation."""
    if host == "localhost":
        return True
    try:
        address = ip_address(host)
    except ValueError:
        return False
    return address.is_loopback and str(address) == host


def is_address_like(host):
    """True for every host a resolver could read as an address rather than look up as a name: IPv6, dotted
    IPv4, and the short, octal, hex, decimal and %-encoded forms (`127.1`, `0177.0.0.1`, `0x7f.1`,
    `2130706433`, `%31%32%37.0.0.1`): anything %-encoded or with a colon, or whose last label is a number."""
    if "%" in host or ":" in host:
        return True
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return last.isdigit() or NUMBER_LABEL.fullmatch(last) is not None


def is_local_name(host):
    return host.rstrip(".").rsplit(".", 1)[-1] in LOCAL_TOP_LEVEL_DOMAINS


def is_dns_name(host):
    """A fully qualified DNS name as push services have: two labels or more, each of 1 to 63 letters, digits
    and hyphens (not at either end; `xn--` labels valid IDNA), 253 characters in all, no trailing dot, and a
    top-level domain of letters (or an internationalized one)."""
    if len(host) > MAX_HOST_LENGTH or "." not in host or host.endswith("."):
        return False
    labels = host.split(".")
    if not all(DNS_LABEL.fullmatch(label) for label in labels):
        return False
    if not (TOP_LEVEL_DOMAIN.fullmatch(labels[-1]) or labels[-1].startswith("xn--")):
        return False
    import idna  # loaded on the first subscription, not at start-up

    try:
        idna.encode(host, uts46=False)
    except idna.IDNAError:
        return False
    return True


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
