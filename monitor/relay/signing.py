"""HMAC-SHA256 body signatures and bearer tokens, shared by the relay and by receivers.

Stdlib only, so a receiver can copy this file (or import it) without pulling in aiohttp.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

SIGNATURE_HEADER: Final = "X-Mlmon-Signature"
TIMESTAMP_HEADER: Final = "X-Mlmon-Timestamp"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
ATTEMPT_HEADER: Final = "X-Mlmon-Delivery-Attempt"
_PREFIX: Final = "sha256="


def sign_body(secret: bytes, body: bytes) -> str:
    """The `X-Mlmon-Signature` value for these exact body bytes: 'sha256=<hex>'."""
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when `header` is 'sha256=<hex HMAC-SHA256 of body>' under `secret`.

    Compares in constant time so the check does not leak how many leading characters matched.
    """
    if not header or not secret:
        return False
    header = header.strip()
    if not header.lower().startswith(_PREFIX):
        return False
    expected = sign_body(secret, body)
    # compare_digest needs ASCII str on both sides; a non-ASCII header cannot be a valid hex digest.
    if not header.isascii():
        return False
    return hmac.compare_digest(expected.lower(), _PREFIX + header[len(_PREFIX):].lower())


def verify_bearer(secret: bytes, authorization: str | None) -> bool:
    """True when `authorization` is 'Bearer <secret>' (Alertmanager's http_config.authorization)."""
    if not authorization or not secret:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), secret)
