"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>", sent Stripe-style as
``Sluice-Signature: t=<unix seconds>,v1=<hex>``.

Pure, so that a receiver can copy it whole: the timestamp is signed with the body, so a
captured request cannot be replayed later than the receiver's tolerance, and the body is
signed as bytes, exactly as sent, so that no JSON re-encoding can change what is checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from app.errors import SluiceError

SIGNATURE_HEADER = "Sluice-Signature"
ID_HEADER = "Sluice-Webhook-Id"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300
"""Five minutes: what a receiver should accept between the signed time and its clock."""


class SignatureError(SluiceError):
    """A webhook request whose signature does not verify (the reason says which check)."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes, base64url without padding."""
    return SECRET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256, keyed by the whole secret string, of ``f"{timestamp}.{body}"``."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Sluice-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},{SCHEME}={signature(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> int:
    """The signed timestamp, if ``header`` signs ``body`` with ``secret`` within
    ``tolerance_s`` of ``now``; SignatureError otherwise.

    Several ``v1`` values may be given (while a secret is rotated): one must match. The
    comparison takes constant time.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif name == SCHEME and value:
            candidates.append(value)
    if timestamp is None:
        raise SignatureError("no timestamp in the signature header")
    if not candidates:
        raise SignatureError(f"no {SCHEME} signature in the signature header")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance_s:
        raise SignatureError("the signed timestamp is outside the tolerance")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("no signature matches the body")
    return timestamp
