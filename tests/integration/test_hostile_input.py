"""Hostile payloads: every one gets a clear 4xx or per-record failures, never a 5xx, and an
accepted job's counts always add up."""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.devtools.bench.processes import rss_bytes
from tests.integration.conftest import TEST_MAX_BODY_BYTES, Stack

TERMINAL = {"completed", "completed_with_errors", "failed"}


def post(stack: Stack, body: bytes, content_type: str, *, encoding: str | None = None,
         params: str = "target=sensor_readings&operation=insert") -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type, **stack.auth_headers}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(f"{stack.base_url}/v1/bulk-operations?{params}",
                                     data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_counts_add_up(stack: Stack, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        status = urllib.request.Request(f"{stack.base_url}/v1/bulk-operations/{job_id}",
                                        headers=stack.auth_headers)
        with urllib.request.urlopen(status) as r:
            job: dict[str, Any] = json.loads(r.read())
        if job["state"] in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


HOSTILE = [
    ("application/json", b'[{"sensor_id": "a", "value": 1', None, 400),  # truncated
    ("application/json", b"[" * 100_000, None, 400),  # deep nesting, then truncated
    ("application/json", b'{"records": 5}', None, 422),
    ("application/json", b'"just a string"', None, 422),
    ("application/json", b"[1e999999]", None, 400),  # beyond double: the JSON parser refuses it
    ("application/x-ndjson", b"\xff\xfe garbage \x00\n{]\n", None, 202),  # per-record failures
    ("text/csv", b"sensor_id,value\n\xff\xfe,1\n", None, 400),  # invalid UTF-8 in CSV
    ("text/csv", b"", None, 422),  # no header
    ("application/x-ndjson", gzip.compress(b"\0" * (TEST_MAX_BODY_BYTES + 10)), "gzip", 413),
    ("application/x-ndjson", b"not gzip at all", "gzip", 400),
]


@pytest.mark.parametrize(("content_type", "body", "encoding", "status"), HOSTILE)
def test_hostile_payloads_get_clear_answers(
    stack: Stack, content_type: str, body: bytes, encoding: str | None, status: int
) -> None:
    got, doc = post(stack, body, content_type, encoding=encoding)
    assert got == status, doc
    if got == 202:
        job = wait_counts_add_up(stack, doc["job_id"])
        counts = job["counts"]
        assert counts["received"] == counts["succeeded"] + counts["failed"] + counts["duplicates"]
        assert counts["failed"] == counts["received"]


def test_sql_nul_huge_values_and_unknown_fields_are_per_record(stack: Stack) -> None:
    tag = f"evil-{uuid.uuid4().hex[:6]}"
    records = [
        {"sensor_id": f"{tag}'); DROP TABLE sensor_readings; --", "value": 1, "sampled_at": 1},
        {"sensor_id": f"{tag}\u0000nul", "value": 1, "sampled_at": 2},
        {"sensor_id": tag, "value": 1.7e308, "sampled_at": 3},
        {"sensor_id": tag, "value": 1, "sampled_at": 99999999999999999},
        {"sensor_id": tag, "value": 1, "sampled_at": 4, "extra": True},
        {"sensor_id": tag * 1000, "value": 1, "sampled_at": 5},
    ]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    status, doc = post(stack, body, "application/x-ndjson")
    assert status == 202, doc
    job = wait_counts_add_up(stack, doc["job_id"])
    assert job["counts"]["succeeded"] == 3  # the SQL text, the huge double, the long id
    assert job["counts"]["failed"] == 3  # NUL, out-of-range timestamp, unknown field


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
sensor_like = st.fixed_dictionaries(
    {"sensor_id": st.text(max_size=12), "value": st.floats(allow_nan=False) | st.text(max_size=3),
     "sampled_at": st.integers(-(2**40), 2**45) | st.text(max_size=25)},
    optional={"extra": json_values},
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    records=st.lists(sensor_like | json_values, min_size=1, max_size=30),
    mangle=st.sampled_from(["ndjson", "json", "json-truncated", "ndjson-bytes", "csv"]),
    noise=st.binary(max_size=40),
)
def test_generated_payloads_never_get_a_5xx_and_counts_add_up(
    stack: Stack, records: list[Any], mangle: str, noise: bytes
) -> None:
    if mangle == "ndjson":
        body, content_type = b"".join(json.dumps(r).encode() + b"\n" for r in records), \
            "application/x-ndjson"
    elif mangle == "ndjson-bytes":
        body, content_type = b"\n".join([json.dumps(r).encode() for r in records] + [noise]), \
            "application/x-ndjson"
    elif mangle == "json":
        body, content_type = json.dumps(records).encode(), "application/json"
    elif mangle == "json-truncated":
        body, content_type = json.dumps(records).encode()[:-1] + noise, "application/json"
    else:
        body = b"sensor_id,value,sampled_at\n" + noise + b"\n" + b"\n".join(
            b",".join(json.dumps(v).encode() for v in (r.values() if isinstance(r, dict) else [r]))
            for r in records)
        content_type = "text/csv"
    status, doc = post(stack, body, content_type)
    assert status < 500, doc
    assert status in (202, 400, 413, 415, 422), doc
    if status == 202:
        job = wait_counts_add_up(stack, doc["job_id"])
        counts = job["counts"]
        assert job["state"] in TERMINAL, job
        assert counts["received"] == counts["succeeded"] + counts["failed"] + counts["duplicates"]


def raw_exchange(stack: Stack, request: bytes, *, close_write: bool) -> bytes:
    """Send bytes as they are (no client library fixing them up) and read the answer."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(stack.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=20) as s:
        s.sendall(request)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("declared", "sent"),
    [(1000, b'{"sensor_id":"cl","value":1,"sampled_at":1}\n'),   # says more than it sends
     (5, b'{"sensor_id":"cl","value":1,"sampled_at":1}\n')],     # says less than it sends
)
def test_a_wrong_content_length_never_gets_a_5xx(stack: Stack, declared: int, sent: bytes) -> None:
    head = (f"POST /v1/bulk-operations?target=sensor_readings HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {stack.auth_headers['Authorization']}\r\n"
            f"Content-Type: application/x-ndjson\r\nContent-Length: {declared}\r\n"
            f"Connection: close\r\n\r\n").encode()
    answer = raw_exchange(stack, head + sent, close_write=True)
    status_line = answer.split(b"\r\n", 1)[0]
    assert not status_line.startswith(b"HTTP/1.1 5"), answer[:300]
    with urllib.request.urlopen(f"{stack.base_url}/healthz") as r:
        assert r.status == 200  # the process is still serving


def test_web_memory_stays_bounded_after_hostile_input(stack: Stack) -> None:
    rss_kb = rss_bytes(stack.web_pid) // 1024
    assert rss_kb < 400 * 1024, f"web process RSS {rss_kb / 1024:.0f} MB"
