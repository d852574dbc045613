"""Hostile records, through the real web process: one huge record, a huge field, thousands
of keys or a long target name gets a short 4xx (or a per-record failure), never a 5xx, and
never costs the web process more than a bounded amount of memory.

Bodies over the shared stack's 8 MiB limit go to a second web process on the same broker,
PostgreSQL and Valkey, started with a 64 MiB limit; its memory high-water mark is its own.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import TEST_MAX_BODY_BYTES, Stack, bearer, second_web, token_for
from tests.integration.helpers import job_of, results, wait_terminal

ROOMY_BODY_BYTES = 64 * 1024 * 1024
SHORT_ANSWER = 2048
"""No problem document needs more: a longer one echoes something the client sent."""
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
INSERT = {"target": "sensor_readings", "operation": "insert"}


def reading(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"sensor_id": f"hostile-{i}", "value": 1.0, "sampled_at": 1_696_161_600_000 + i,
            **extra}


def many_keys(count: int) -> bytes:
    """One JSON object with ``count`` distinct keys, built as bytes (no dict of that size here)."""
    return b"{" + b",".join(b'"k%d":0' % i for i in range(count)) + b"}"


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident memory) of a process, in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh from VmRSS (Linux 4.0+: "5" to clear_refs), so a peak is this test's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass(frozen=True)
class Web:
    """A web process of its own: base URL, pid and auth headers."""

    base_url: str
    pid: int
    headers: dict[str, str]


@pytest.fixture(scope="module")
def roomy(stack: Stack) -> Iterator[Web]:
    with second_web(stack, stack.data / "web-roomy.log",
                    max_body_bytes=str(ROOMY_BODY_BYTES)) as web:
        yield Web(web.base_url, web.pid, stack.auth_headers)


@pytest.fixture
async def roomy_http(roomy: Web) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(roomy.base_url, headers=roomy.headers,
                                     timeout=timeout) as session:
        yield session


async def post(http: aiohttp.ClientSession, body: bytes, headers: dict[str, str],
               params: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    async with http.post("/v1/bulk-operations", params=params or {}, data=body,
                         headers=headers) as r:
        return r.status, await r.read(), dict(r.headers)


# --- one record of millions of keys ------------------------------------------------


async def test_a_record_of_millions_of_keys_is_refused_while_streaming(
    roomy: Web, roomy_http: aiohttp.ClientSession
) -> None:
    record = many_keys(3_000_000)  # 37 MiB of JSON, about 7 MB gzipped
    body = gzip.compress(b"[" + record + b"]", compresslevel=1)
    reset_peak(roomy.pid)
    before = memory_kb(roomy.pid)["VmRSS"]
    status, answer, _ = await post(roomy_http, body, {**JSON, "Content-Encoding": "gzip"}, INSERT)
    grown_mb = (memory_kb(roomy.pid)["VmHWM"] - before) / 1024
    print(f"\nweb peak memory grew by {grown_mb:.0f} MB for one {len(record) >> 20} MiB record")
    assert status == 413, answer[:300]
    assert json.loads(answer)["type"].endswith("/record-too-large")
    assert grown_mb < 150  # unbounded, one such record took 350 MB


@pytest.mark.parametrize("framing", ["json", "ndjson"])
async def test_thousands_of_keys_in_a_small_record_fail_that_record_only(
    http: aiohttp.ClientSession, framing: str
) -> None:
    wide = many_keys(5000)  # 40 KB: under the byte limit, over the field limit
    good = json.dumps(reading(1)).encode()
    if framing == "json":
        body, headers = b"[" + wide + b"," + good + b"]", JSON
    else:
        body, headers = wide + b"\n" + good + b"\n", NDJSON
    status, answer, _ = await post(http, body, headers, INSERT)
    assert status == 202, answer[:300]
    job_id = json.loads(answer)["job_id"]
    await wait_terminal(http, job_id)
    outcomes = {r["index"]: r for r in await results(http, job_id)}
    assert outcomes[0]["code"] == "record_too_large", outcomes[0]
    assert "5000" not in outcomes[0]["message"] and len(outcomes[0]["message"]) < 200
    assert outcomes[1]["status"] in ("succeeded", "duplicate")


# --- one huge field ----------------------------------------------------------------


@pytest.mark.parametrize("media", ["json", "envelope"])
async def test_a_20_mib_string_field_gets_a_4xx_not_broker_unavailable(
    roomy_http: aiohttp.ClientSession, media: str
) -> None:
    record = json.dumps(reading(2, sensor_id="x" * (20 << 20))).encode()
    if media == "json":
        body = b"[" + record + b"]"
    else:
        body = b'{"target":"sensor_readings","records":[' + record + b"]}"
    status, answer, headers = await post(roomy_http, body, JSON,
                                         INSERT if media == "json" else None)
    assert status == 413, answer[:300]
    assert json.loads(answer)["type"].endswith("/record-too-large")
    assert "Retry-After" not in headers


async def test_a_record_under_the_limit_but_over_one_kafka_message_fails_alone(
    http: aiohttp.ClientSession,
) -> None:
    # 950,000 bytes: framed (under 1 MiB), but its envelope cannot fit one 900 kB message.
    big = reading(3, sensor_id="y" * 950_000)
    body = json.dumps([big, reading(4)]).encode()
    status, answer, _ = await post(http, body, JSON, INSERT)
    assert status == 202, answer[:300]
    job_id = json.loads(answer)["job_id"]
    await wait_terminal(http, job_id)
    outcomes = {r["index"]: r for r in await results(http, job_id)}
    assert outcomes[0]["code"] == "record_too_large", outcomes[0]
    assert outcomes[1]["status"] in ("succeeded", "duplicate")


# --- long target names -------------------------------------------------------------


@pytest.mark.parametrize("length", [5_000_000, 200_000, 60])
async def test_a_long_body_target_is_never_echoed_whole(
    http: aiohttp.ClientSession, length: int
) -> None:
    target = "t" * length
    body = json.dumps({"target": target, "records": [reading(5)]}).encode()
    assert len(body) < TEST_MAX_BODY_BYTES
    status, answer, _ = await post(http, body, JSON)
    assert status in (413, 422), answer[:300]
    assert len(answer) < SHORT_ANSWER, f"{len(answer)} bytes: {answer[:200]!r}"


async def test_a_long_query_target_is_never_echoed_whole(http: aiohttp.ClientSession) -> None:
    status, answer, _ = await post(http, json.dumps([reading(6)]).encode(), JSON,
                                   {"target": "q" * 6000})
    assert 400 <= status < 500, answer[:300]
    assert len(answer) < SHORT_ANSWER, f"{len(answer)} bytes: {answer[:200]!r}"


# --- the access policy before the records ------------------------------------------


def _insert_only(stack: Stack) -> dict[str, str]:
    return bearer(token_for(stack.auth, subject="insert-only-user", roles=("insert-only",)))


async def test_a_body_target_is_authorised_before_its_records_are_read(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # Not allowed to delete: the answer is 403, not the 400 of the broken records after it.
    body = b'{"target":"sensor_readings","operation":"delete","records":[{"sensor_id": oops'
    status, answer, _ = await post(http, body, {**JSON, **_insert_only(stack)})
    assert status == 403, answer[:300]
    assert json.loads(answer)["type"].endswith("/target-not-allowed")


def test_a_forbidden_body_target_is_answered_without_waiting_for_the_body(stack: Stack) -> None:
    port = int(stack.base_url.rsplit(":", 1)[1])
    head = (f"POST /v1/bulk-operations HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {_insert_only(stack)['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n").encode()
    envelope = b'{"target":"sensor_readings","operation":"delete","records":[{"sensor_id":"a"'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + envelope)  # ... and the other 99.99 MB never come
        started = time.monotonic()
        try:
            answer = s.recv(4096)
        except TimeoutError:
            answer = b""
    waited = time.monotonic() - started
    status_line = answer.split(b"\r\n", 1)[0]
    print(f"\nanswered after {waited:.2f} s: {status_line!r}")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]


# --- memory under concurrent hostile bodies ----------------------------------------


def _hostile_bodies() -> list[tuple[bytes, dict[str, str], dict[str, str] | None]]:
    keys = gzip.compress(b"[" + many_keys(1_000_000) + b"]", compresslevel=1)
    field = json.dumps([reading(7, sensor_id="z" * (20 << 20))]).encode()
    target = json.dumps({"target": "t" * (20 << 20), "records": []}).encode()
    return [(keys, {**JSON, "Content-Encoding": "gzip"}, INSERT), (field, JSON, INSERT),
            (target, JSON, None)]


async def test_twenty_concurrent_hostile_bodies_keep_the_web_process_small(
    roomy: Web, roomy_http: aiohttp.ClientSession
) -> None:
    kinds = _hostile_bodies()
    reset_peak(roomy.pid)
    answers = await asyncio.gather(*(post(roomy_http, *kinds[i % len(kinds)]) for i in range(20)))
    figures = memory_kb(roomy.pid)
    print(f"\nweb process after 20 concurrent hostile bodies: VmHWM {figures['VmHWM'] / 1024:.0f} MB,"
          f" VmRSS {figures['VmRSS'] / 1024:.0f} MB")
    statuses = sorted(status for status, _, _ in answers)
    assert all(400 <= s < 500 for s in statuses), statuses
    assert all(len(answer) < SHORT_ANSWER for _, answer, _ in answers)
    assert figures["VmHWM"] < 300 * 1024, figures


# --- generated hostile records: never a 5xx, never a long answer -------------------


@st.composite
def hostile_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str], dict[str, str] | None]:
    field = draw(st.sampled_from([0, 100, 900_000, 1_100_000, 3_000_000]))
    keys = draw(st.sampled_from([0, 1599, 1601, 60_000, 300_000]))
    target = draw(st.sampled_from(["sensor_readings", "nope", "t" * 70, "t" * 100_000,
                                   "t" * 2_000_000, "ü" * 1000]))
    framing = draw(st.sampled_from(["json", "envelope", "ndjson", "csv"]))
    record = json.dumps(reading(8, sensor_id="s" * field)).encode()[:-1]
    if keys:
        record += b"," + many_keys(keys)[1:-1]
    record += b"}"
    records = [record, json.dumps(reading(9)).encode()]
    query = {"target": target}
    if framing == "json":
        return b"[" + b",".join(records) + b"]", JSON, query
    if framing == "envelope":
        head = json.dumps({"target": target}).encode()[:-1]
        return head + b',"records":[' + b",".join(records) + b"]}", JSON, None
    if framing == "ndjson":
        return b"\n".join(records), NDJSON, query
    header = b"sensor_id,value,sampled_at" + b"".join(b",k%d" % i for i in range(keys))
    row = b"s" * field + b",1,1" + b",0" * keys
    return header + b"\n" + row + b"\n", {"Content-Type": "text/csv"}, query


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=hostile_bodies())
def test_generated_hostile_records_never_get_a_5xx_or_a_long_answer(
    stack: Stack, case: tuple[bytes, dict[str, str], dict[str, str] | None]
) -> None:
    body, headers, query = case

    async def send() -> tuple[int, bytes, dict[str, str]]:
        async with aiohttp.ClientSession(stack.base_url, headers=stack.auth_headers) as session:
            return await post(session, body, headers, query)

    status, answer, _ = asyncio.run(send())
    assert status < 500, answer[:300]
    assert status == 202 or len(answer) < SHORT_ANSWER, f"{status}: {answer[:200]!r}"


async def test_the_shared_web_process_still_answers(http: aiohttp.ClientSession) -> None:
    job = await post(http, json.dumps([reading(10)]).encode(), JSON, INSERT)
    assert job[0] == 202
    await job_of(http, json.loads(job[1])["job_id"])
