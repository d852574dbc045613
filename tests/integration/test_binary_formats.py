"""Protobuf and Avro bodies on the running stack: the published .proto, length-delimited
messages encoded by hand from it, an Avro file written by fastavro, rows in PostgreSQL."""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import uuid
from typing import Any

import aiohttp
import asyncpg
import fastavro
import pytest

from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from tests.integration.conftest import Stack, bearer, token_for
from tests.integration.helpers import BASE_MS, results, wait_terminal
from web.payloads.binary import write_varint

PROTOBUF = {"Content-Type": "application/x-protobuf"}
AVRO = {"Content-Type": "application/avro"}
RECORDS = 10_000
NOT_A_MESSAGE, INVALID_VALUE = 3_000, 7_000


def _key(number: int, wire_type: int) -> bytes:
    return write_varint(number << 3 | wire_type)


def _reading(numbers: dict[str, int], sensor: str, value: float, millis: int) -> bytes:
    """One SensorReadings message, encoded from the .proto's field numbers alone."""
    seconds, rest = divmod(millis, 1000)
    stamp = _key(1, 0) + write_varint(seconds) + _key(2, 0) + write_varint(rest * 1_000_000)
    name = sensor.encode()
    return (_key(numbers["sensor_id"], 2) + write_varint(len(name)) + name
            + _key(numbers["value"], 1) + struct.pack("<d", value)
            + _key(numbers["sampled_at"], 2) + write_varint(len(stamp)) + stamp)


async def _proto(http: aiohttp.ClientSession, name: str = "sensor_readings",
                 headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with http.get(f"/v1/targets/{name}.proto", headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def _post(http: aiohttp.ClientSession, body: bytes, headers: dict[str, str],
                params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.post("/v1/bulk-operations", data=body, headers=headers,
                         params={"target": "sensor_readings"} if params is None else params) as r:
        return r.status, await r.json(content_type=None)


async def _rows(db: asyncpg.Pool, tag: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1",
                                   tag + "%")
    return count


async def test_the_proto_is_published_for_callers_of_the_target(
        stack: Stack, http: aiohttp.ClientSession) -> None:
    status, content_type, text = await _proto(http)
    assert (status, content_type) == (200, "text/plain; charset=utf-8")
    assert 'syntax = "proto3";' in text and "package sluice.targets;" in text
    assert 'import "google/protobuf/timestamp.proto";' in text
    assert "message SensorReadings {" in text
    assert re.findall(r"^  (\S+) (\w+) = (\d+);$", text, re.M) == [
        ("string", "sensor_id", "1"), ("double", "value", "2"),
        ("google.protobuf.Timestamp", "sampled_at", "3")]
    nobody = bearer(token_for(stack.auth, subject="proto-no-role", roles=("no-such-role",)))
    hidden = await _proto(http, headers=nobody)
    missing = await _proto(http, "no_such_target")
    assert hidden[0] == missing[0] == 404
    hidden_problem, missing_problem = json.loads(hidden[2]), json.loads(missing[2])
    assert hidden_problem["type"].endswith("/target-not-found")
    assert hidden_problem["detail"] == missing_problem["detail"]  # nothing tells them apart


async def test_protobuf_records_reach_the_table_and_two_bad_ones_fail_alone(
        http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    _, _, text = await _proto(http)
    numbers = {name: int(n) for name, n in re.findall(r"^  \S+ (\w+) = (\d+);$", text, re.M)}
    tag = f"tagpb{uuid.uuid4().hex[:8]}"
    messages = []
    for i in range(RECORDS):
        if i == NOT_A_MESSAGE:
            message = b"\x0a\x05ab"  # a string field longer than the message
        else:
            sensor = f"{tag}-{i}" if i != INVALID_VALUE else f"{tag}-\x00"  # NUL: not storable
            message = _reading(numbers, sensor, i / 4, BASE_MS + i)
        messages.append(write_varint(len(message)) + message)
    body = b"".join(messages)

    status, problem = await _post(http, body, PROTOBUF, params={})
    assert status == 422 and problem["type"].endswith("/missing-target")

    status, accepted = await _post(http, gzip.compress(body), {**PROTOBUF, "Content-Encoding": "gzip"})
    assert status == 202, accepted
    assert accepted["records_received"] == RECORDS
    job = await wait_terminal(http, accepted["job_id"])
    assert job["state"] == "completed_with_errors"
    assert (job["counts"]["succeeded"], job["counts"]["failed"]) == (RECORDS - 2, 2)
    failed = {r["index"]: r["code"] for r in await results(http, accepted["job_id"], "failed")}
    assert failed == {NOT_A_MESSAGE: "malformed_record", INVALID_VALUE: "invalid_string"}
    assert await _rows(db, tag) == RECORDS - 2
    sampled = await db.fetchval("SELECT sampled_at FROM sensor_readings WHERE sensor_id = $1",
                                f"{tag}-5")
    assert int(sampled.timestamp() * 1000) == BASE_MS + 5


async def test_an_avro_file_reaches_the_table(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    target = load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"]
    tag = f"tagavro{uuid.uuid4().hex[:8]}"
    out = io.BytesIO()
    fastavro.writer(out, target.avro_schema,
                    ({"sensor_id": f"{tag}-{i}", "value": i / 4, "sampled_at": BASE_MS + i}
                     for i in range(RECORDS)), codec="deflate")
    status, accepted = await _post(http, out.getvalue(), AVRO)
    assert status == 202, accepted
    job = await wait_terminal(http, accepted["job_id"])
    assert (job["state"], job["counts"]["succeeded"]) == ("completed", RECORDS)
    assert await _rows(db, tag) == RECORDS


@pytest.mark.parametrize("content_type", ["application/avro", "application/x-protobuf"])
async def test_a_binary_body_needs_the_target_in_the_query(
        http: aiohttp.ClientSession, content_type: str) -> None:
    status, problem = await _post(http, b"", {"Content-Type": content_type}, params={})
    assert status == 422 and problem["type"].endswith("/missing-target")


async def test_an_avro_file_the_target_cannot_read_is_refused_whole(
        http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    tag = f"tagbad{uuid.uuid4().hex[:8]}"
    schema = {"type": "record", "name": "sensor_readings", "fields": [
        {"name": "sensor_id", "type": "string"}, {"name": "value", "type": "string"},
        {"name": "sampled_at", "type": "long"}]}
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema),
                    [{"sensor_id": f"{tag}-1", "value": "high", "sampled_at": BASE_MS}])
    status, problem = await _post(http, out.getvalue(), AVRO)
    assert status == 422 and problem["type"].endswith("/unprocessable-payload")
    assert "field 'value'" in problem["detail"]
    assert await _rows(db, tag) == 0
