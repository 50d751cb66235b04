"""The session token a request carries, as Better Auth hands it to a client.

Better Auth hands a client the same credential in two forms:

- the raw session token, exactly as stored in `session.token`;
- the signed form `<token>.<signature>` that its bearer plugin returns in the
  `set-auth-token` header and that its session cookie holds, where the
  signature is standard base64 of HMAC-SHA256(BETTER_AUTH_SECRET, token),
  often URL-encoded.

Either may come in `Authorization: Bearer ...`; the cookie is read only when
there is no Authorization header, and only with BETTER_AUTH_SECRET set. A
signature is checked against BETTER_AUTH_SECRET; without the secret, a signed
credential is refused, except in the tests and on the development server,
which look up its token part (see mode.py): no signature is ever taken
unchecked in production.
Tokens are never logged, whole or in part.
"""

import base64
import hashlib
import hmac
from urllib.parse import unquote

SIGNATURE_LENGTH = 44  # base64 of a 32-byte HMAC-SHA256, with padding
MAX_TOKEN_LENGTH = 512


def sign(token, secret):
    digest = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def valid_signature(token, signature, secret):
    expected = sign(token, secret)
    return len(signature) == SIGNATURE_LENGTH and hmac.compare_digest(expected.encode(), signature.encode())


def session_token(credential, secret, check_signature=True):
    """The session token a credential carries, or None if it cannot be trusted.

    A credential with a signature needs the secret to check it against. Without
    one it is refused, unless `check_signature` is false (the tests and the
    development server, see mode.py): then the token part is looked up as it
    stands (in Better Auth's default configuration the raw token alone is a
    valid credential anyway).
    """
    credential = unquote(credential)
    token, dot, signature = credential.rpartition(".")
    if not dot:
        token, signature = credential, None
    if signature is not None:
        if secret:
            if not valid_signature(token, signature, secret):
                return None
        elif check_signature:
            return None  # no secret to check it against
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
