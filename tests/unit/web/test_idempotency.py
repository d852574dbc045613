"""Idempotency fingerprints: the same submission hashes alike, any difference does not.

IdempotencyStore needs Redis and is covered by the integration tests.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from web.idempotency import Fingerprint

ROUTE = ("/v1/bulk-operations", "sensor_readings", "upsert", "application/json", "")
BODY = b'[{"sensor_id":"s-1","value":1.5,"sampled_at":"2024-05-01T12:00:00Z"}]'


def _digest(*parts: str, body: bytes = BODY) -> str:
    fingerprint = Fingerprint(*parts)
    fingerprint.update(body)
    return fingerprint.hexdigest()


def test_digest_is_hex_sha256() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", _digest(*ROUTE))


def test_digest_matches_the_documented_construction() -> None:
    # Each part length-prefixed (8 bytes, big-endian), then the raw body. Changing this
    # makes every stored fingerprint mismatch its replays for the next 24 h.
    framed = b"".join(len(p.encode()).to_bytes(8, "big") + p.encode() for p in ROUTE)
    expected = hashlib.sha256(framed + BODY).hexdigest()
    assert _digest(*ROUTE) == expected


def test_same_inputs_same_digest() -> None:
    assert _digest(*ROUTE) == _digest(*ROUTE)


def test_hexdigest_can_be_read_twice() -> None:
    fingerprint = Fingerprint(*ROUTE)
    fingerprint.update(BODY)
    assert fingerprint.hexdigest() == fingerprint.hexdigest()


def test_more_body_changes_the_digest() -> None:
    fingerprint = Fingerprint(*ROUTE)
    fingerprint.update(BODY)
    before = fingerprint.hexdigest()
    fingerprint.update(b" ")
    assert fingerprint.hexdigest() != before


@pytest.mark.parametrize(
    "other_body",
    [
        b"",
        BODY.replace(b"1.5", b"1.6"),
        BODY + b"\n",
        BODY[:-1],
    ],
)
def test_different_body_different_digest(other_body: bytes) -> None:
    assert _digest(*ROUTE, body=other_body) != _digest(*ROUTE)


@pytest.mark.parametrize("position", range(len(ROUTE)))
def test_each_route_part_counts(position: int) -> None:
    changed = list(ROUTE)
    changed[position] = changed[position] + "x"
    assert _digest(*changed) != _digest(*ROUTE)


def test_empty_and_absent_parameters_differ() -> None:
    assert _digest("/v1/bulk-operations", "sensor_readings", "") != _digest(
        "/v1/bulk-operations", "sensor_readings"
    )


def test_part_boundaries_count() -> None:
    assert _digest("ab", "c") != _digest("a", "bc")
    assert _digest("ab", "") != _digest("a", "b")


def test_part_order_counts() -> None:
    assert _digest("insert", "upsert") != _digest("upsert", "insert")


def test_route_and_body_do_not_run_together() -> None:
    # Moving bytes from the last part into the body gives another request.
    assert _digest("/v1/bulk-operations", "gzip", body=b"[]") != _digest(
        "/v1/bulk-operations", "gz", body=b"ip[]"
    )


def test_parts_containing_nul_do_not_collide() -> None:
    assert _digest("/v1/bulk-operations", "a\0", "") != _digest("/v1/bulk-operations", "a", "\0")


def test_non_ascii_parts() -> None:
    assert _digest("/v1/bulk-operations", "mesures_températures") != _digest(
        "/v1/bulk-operations", "mesures_temperatures"
    )


@settings(max_examples=100, deadline=None, database=None)
@given(body=st.binary(max_size=300), data=st.data())
def test_chunking_does_not_change_the_digest(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    bounds = [0, *cuts, len(body)]
    chunked = Fingerprint(*ROUTE)
    for start, end in zip(bounds, bounds[1:], strict=False):
        chunked.update(body[start:end])
    assert chunked.hexdigest() == _digest(*ROUTE, body=body)
