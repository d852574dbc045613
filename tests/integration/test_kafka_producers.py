"""Producers writing plain records to an input topic, read back by an analyst from the
result topic, both with confluent-kafka (librdkafka): a client Sluice itself does not use."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import fastavro
import orjson
import pytest
from confluent_kafka import Producer

from app.settings import env_var
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from tests.integration.conftest import Stack
from tests.integration.helpers import reader_from_beginning, reading
from tests.integration.isolated import IsolatedStack

INPUT = "sluice.input.sensor_readings"
RESULTS = "sluice.results"


def produce(stack: Stack, messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    produce_to(stack.kafka, messages)


def produce_to(bootstrap: str, messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    """One partition (one key), in this order."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for value, headers in messages:
        producer.produce(INPUT, value=value, key=b"any-key", headers=headers)
    assert producer.flush(30) == 0


def _log_lines(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The JSON log lines of these files (a process may also print plain text, and a
    terminal escape with no newline before a log line)."""
    for path in paths:
        for line in path.read_bytes().splitlines():
            start = line.find(b'{"ts"')
            if start >= 0:
                yield orjson.loads(line[start:])


def avro_record(record: dict[str, Any]) -> bytes:
    target = load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, target.avro_schema, record)
    return out.getvalue()


def read_outcomes(
    stack: Stack, sensor_prefix: str, expected: int, timeout: float = 90
) -> list[dict[str, Any]]:
    consumer = reader_from_beginning(stack.kafka, RESULTS)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            doc = orjson.loads(message.value())
            if doc["source"] is None or doc["source"]["topic"] != INPUT:
                continue
            for outcome in doc["outcomes"]:
                key = outcome.get("key") or {}
                if str(key.get("sensor_id", "")).startswith(sensor_prefix):
                    found.append({**outcome, "partition": doc["source"]["partition"]})
    finally:
        consumer.close()
    return found


async def test_producer_records_reach_postgresql_and_the_result_topic(
    stack: Stack, db: asyncpg.Pool
) -> None:
    tag = f"kafka-{uuid.uuid4().hex[:8]}"
    json_records = [orjson.dumps({"sensor_id": tag, "value": i, "sampled_at": 1_000 + i})
                    for i in range(20)]
    messages = [(v, []) for v in json_records]
    messages.append((avro_record({"sensor_id": f"{tag}-avro", "value": 2.5,
                                  "sampled_at": 5_000}), [("content-type", b"application/avro")]))
    messages.append((orjson.dumps({"sensor_id": f"{tag}-up", "value": 1.0, "sampled_at": 7}),
                     [("sluice-operation", b"upsert")]))
    await asyncio.to_thread(produce, stack, messages)

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        count = await db.fetchval(
            "SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1", tag + "%")
        if count == 22:
            break
        await asyncio.sleep(0.3)
    assert count == 22
    outcomes = await asyncio.to_thread(read_outcomes, stack, tag, 22)
    # The results topic is at least once: an envelope delivered twice (a re-forward, the
    # idle-partition reader racing the group) has its outcomes published again, identical.
    by_record: dict[tuple[int, int], dict[str, Any]] = {}
    for outcome in outcomes:
        assert by_record.setdefault((outcome["partition"], outcome["index"]), outcome) == outcome
    assert len(by_record) == 22
    assert {o["status"] for o in outcomes} == {"succeeded"}
    # The index of a producer record is its offset in the input partition.
    assert all(isinstance(o["index"], int) and o["index"] >= 0 for o in outcomes)


async def test_an_undecodable_producer_record_is_reported_not_lost(stack: Stack, db: asyncpg.Pool) -> None:
    tag = f"kbad-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(produce, stack, [
        (b"{not json", []),
        (orjson.dumps({"sensor_id": tag, "value": "x", "sampled_at": 1}), []),
        (orjson.dumps({"sensor_id": tag, "value": 1, "sampled_at": 1}), []),
    ])
    deadline = time.monotonic() + 90
    rows: list[asyncpg.Record] = []
    # Until both are there: the two records may be written by two partitions, one after the other.
    while time.monotonic() < deadline and {r["code"] for r in rows} < {"malformed_record", "wrong_type"}:
        rows = await db.fetch(
            "SELECT r.status, r.code FROM sluice_record_results r JOIN sluice_jobs j USING (job_id)"
            " WHERE j.source = 'kafka' AND r.code IN ('malformed_record', 'wrong_type')"
            " AND r.message IS NOT NULL")
        await asyncio.sleep(0.3)
    assert {r["code"] for r in rows} >= {"malformed_record", "wrong_type"}
    written = 0
    while time.monotonic() < deadline and written < 1:
        written = await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", tag)
        await asyncio.sleep(0.3)
    assert written == 1


@pytest.mark.slow
async def test_an_operation_the_input_topic_does_not_accept_fails_and_is_audited() -> None:
    """Left at its default (SLUICE_INPUT_OPERATIONS unset), an input topic accepts inserts
    only: an upsert or a delete asked for by header is a failed record, not a write."""
    stack = IsolatedStack().start()
    try:
        stack.spawn("web")  # creates the input topics
        stack.spawn("worker")
        kept, upserted = f"kop-{uuid.uuid4().hex[:8]}", f"kop-up-{uuid.uuid4().hex[:8]}"
        claimed = [("sluice-principal", b"meter-gateway")]
        await asyncio.to_thread(produce_to, stack.env[env_var("kafka_bootstrap")], [
            (orjson.dumps(reading(kept, 0)), claimed),
            (orjson.dumps(reading(upserted, 0)), [("sluice-operation", b"upsert"), *claimed]),
            (orjson.dumps({"sensor_id": kept, "sampled_at": reading(kept, 0)["sampled_at"]}),
             [("sluice-operation", b"delete"), *claimed]),
            (orjson.dumps(reading(kept, 1)), [("sluice-operation", b"insert")]),
        ])
        conn = await asyncpg.connect(stack.dsn)
        try:
            deadline = time.monotonic() + 90
            rows: list[asyncpg.Record] = []
            while time.monotonic() < deadline and len(rows) < 4:
                rows = await conn.fetch(
                    "SELECT r.idx, r.status, r.code FROM sluice_record_results r"
                    " JOIN sluice_jobs j USING (job_id) WHERE j.source = 'kafka' ORDER BY r.idx")
                await asyncio.sleep(0.3)
            assert [(r["status"], r["code"]) for r in rows] == [
                ("succeeded", None), ("failed", "operation_not_allowed"),
                ("failed", "operation_not_allowed"), ("succeeded", None)]
            assert await conn.fetchval(
                "SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", kept) == 2
            assert await conn.fetchval(
                "SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", upserted) == 0
        finally:
            await conn.close()
        audit = [doc for doc in _log_lines(stack.data.glob("worker-*.log"))
                 if doc.get("audit") and doc.get("topic") == INPUT]
        refused = {(a["operation"], a["records"], a["refused"], a["asserted_principal"])
                   for a in audit if a["refused"]}
        assert refused == {("upsert", 1, 1, "meter-gateway"), ("delete", 1, 1, "meter-gateway")}
        assert all(a["principal_authenticated"] is False for a in audit)
    finally:
        stack.stop()
