"""Webhook signatures: what a receiver computes from the secret, the header and the raw body."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from schemas.webhook_signature import SignatureError, new_secret, sign, signature, verify

SECRET = "whsec_" + "A" * 43
BODY = b'{"id":"d-1","type":"job.ended","data":{"job_id":"j"}}'
T = 1_765_000_000


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_keyed_by_the_whole_secret() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, T, BODY) == expected
    assert sign(SECRET, T, BODY) == f"t={T},v1={expected}"


def test_a_signed_body_verifies_and_returns_its_timestamp() -> None:
    assert verify(SECRET, sign(SECRET, T, BODY), BODY, tolerance_s=300, now=T + 299) == T


@pytest.mark.parametrize(("header", "body", "secret", "now", "reason"), [
    (sign(SECRET, T, BODY), BODY + b" ", SECRET, T, "no signature matches"),
    (sign(SECRET, T, BODY), BODY, SECRET[:-1] + "B", T, "no signature matches"),
    (sign(SECRET, T, BODY).replace(f"t={T}", f"t={T + 1}"), BODY, SECRET, T, "no signature matches"),
    (sign(SECRET, T, BODY), BODY, SECRET, T + 301, "outside the tolerance"),
    (sign(SECRET, T, BODY), BODY, SECRET, T - 301, "outside the tolerance"),
    (f"v1={signature(SECRET, T, BODY)}", BODY, SECRET, T, "no timestamp"),
    (f"t={T}", BODY, SECRET, T, "no v1 signature"),
    (f"t={T},v0={signature(SECRET, T, BODY)}", BODY, SECRET, T, "no v1 signature"),
    ("", BODY, SECRET, T, "no timestamp"),
    (f"t=-{T},v1={signature(SECRET, T, BODY)}", BODY, SECRET, T, "no timestamp"),
])
def test_anything_else_is_refused(header: str, body: bytes, secret: str, now: int,
                                  reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(secret, header, body, tolerance_s=300, now=now)


def test_one_matching_signature_among_several_is_enough_while_a_secret_is_rotated() -> None:
    old = sign("whsec_old", T, BODY).split(",")[1]
    header = f"t={T},{old},{sign(SECRET, T, BODY).split(',')[1]}"
    assert verify(SECRET, header, BODY, now=T) == T
    assert verify("whsec_old", header, BODY, now=T) == T


def test_secrets_are_fresh_and_carry_32_random_bytes() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", s) for s in secrets)
