"""Correct final state: records of one key applied in log order, across operations, jobs, tenants
and both entry points (HTTP and the input topic); bad rows cost only themselves; nothing
undeliverable is skipped silently. Each test has its own keys on the shared stack."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from schemas.envelope import JOB_HEADER, RECORDS_HEADER, Envelope, EnvelopeCodec, Item
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from tests.integration.conftest import Stack, bearer, token_for
from tests.integration.helpers import BASE_MS, NDJSON, ndjson, reading, results, submit, wait_terminal
from tests.integration.test_kafka_producers import produce

TARGETS = load_targets(BUILTIN_TARGETS_DIR)


def tag_for(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def run(http: aiohttp.ClientSession, records: list[Any], operation: str,
              headers: dict[str, str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit one payload, wait for its end; return (job, result lines)."""
    accepted = await submit(http, ndjson(records), operation=operation,
                            headers={**NDJSON, **(headers or {})})
    job = await wait_terminal(http, accepted["job_id"])
    return job, await results(http, accepted["job_id"])


async def values_of(db: asyncpg.Pool, sensor: str) -> list[float]:
    rows = await db.fetch("SELECT value FROM sensor_readings WHERE sensor_id = $1 ORDER BY sampled_at",
                          sensor)
    return [r["value"] for r in rows]


def statuses(lines: list[dict[str, Any]]) -> list[str]:
    return [line["status"] for line in sorted(lines, key=lambda line: line["index"])]


# --- one key written several times ----------------------------------------------------


async def test_aba_upserts_in_one_payload_end_at_a(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    sensor = tag_for("aba1")
    job, lines = await run(http, [reading(sensor, 0, v) for v in (1.0, 2.0, 1.0)], "upsert")
    assert statuses(lines) == ["succeeded", "succeeded", "succeeded"]
    assert job["counts"]["duplicates"] == 0
    assert await values_of(db, sensor) == [1.0]


async def test_aba_upserts_across_jobs_end_at_a(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    sensor = tag_for("aba3")
    outcomes = []
    for value in (1.0, 2.0, 1.0):
        _, lines = await run(http, [reading(sensor, 0, value)], "upsert")
        outcomes += statuses(lines)
    assert outcomes == ["succeeded", "succeeded", "succeeded"]
    assert await values_of(db, sensor) == [1.0]


async def test_insert_delete_insert_leaves_the_row(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    sensor = tag_for("idi")
    record = reading(sensor, 0, 5.0)
    key = {"sensor_id": sensor, "sampled_at": record["sampled_at"]}
    for records, operation in (([record], "insert"), ([key], "delete"), ([record], "insert")):
        _, lines = await run(http, records, operation)
        assert statuses(lines) == ["succeeded"], (operation, lines)
    assert await values_of(db, sensor) == [5.0]


async def test_insert_delete_insert_in_one_payload_of_mixed_jobs(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    # The three jobs are submitted back to back, so their envelopes share takes and chunks.
    sensor = tag_for("idi-burst")
    records = [reading(sensor, i, 5.0) for i in range(50)]
    keys = [{"sensor_id": sensor, "sampled_at": r["sampled_at"]} for r in records]
    jobs = []
    for body, operation in ((records, "insert"), (keys, "delete"), (records, "insert")):
        jobs.append(await submit(http, ndjson(body), operation=operation))
    for accepted in jobs:
        job = await wait_terminal(http, accepted["job_id"])
        assert job["counts"]["succeeded"] == 50, job
    assert await values_of(db, sensor) == [5.0] * 50


async def test_delete_right_after_upsert_deletes_every_row(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    sensor = tag_for("updel")
    rows = [reading(sensor, i) for i in range(200)]
    upserted = await submit(http, ndjson(rows), operation="upsert")
    deleted = await submit(http, ndjson([{"sensor_id": sensor, "sampled_at": r["sampled_at"]}
                                         for r in rows]), operation="delete")
    assert (await wait_terminal(http, upserted["job_id"]))["counts"]["succeeded"] == 200
    assert (await wait_terminal(http, deleted["job_id"]))["counts"]["succeeded"] == 200
    assert await values_of(db, sensor) == []


async def test_delete_then_insert(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    sensor = tag_for("delins")
    await run(http, [reading(sensor, 0, 1.0)], "insert")
    _, lines = await run(http, [{"sensor_id": sensor, "sampled_at": BASE_MS},
                                {"sensor_id": sensor, "sampled_at": BASE_MS + 99}], "delete")
    # The second key never existed: deleting it changes nothing.
    assert statuses(lines) == ["succeeded", "duplicate"]
    _, lines = await run(http, [reading(sensor, 0, 2.0)], "insert")
    assert statuses(lines) == ["succeeded"]
    assert await values_of(db, sensor) == [2.0]


async def test_the_same_record_twice_in_one_payload(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    sensor = tag_for("twice")
    _, lines = await run(http, [reading(sensor, 0, 3.0)] * 2 + [reading(sensor, 0, 4.0)], "insert")
    assert [(line["status"], line.get("code")) for line in sorted(lines, key=lambda x: x["index"])] == [
        ("succeeded", None), ("duplicate", None), ("failed", "23505")]
    assert await values_of(db, sensor) == [3.0]


async def test_resending_an_applied_payload_is_all_duplicates_and_rewrites_nothing(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    sensor = tag_for("resend")
    for operation in ("insert", "upsert"):
        records = [reading(sensor, i, float(i)) for i in range(300)]
        await run(http, records, operation)
        before = await db.fetch("SELECT sampled_at, xmin::text, ctid::text FROM sensor_readings"
                                " WHERE sensor_id = $1 ORDER BY sampled_at", sensor)
        job, lines = await run(http, records, operation)
        assert job["counts"]["duplicates"] == 300, (operation, job)
        assert set(statuses(lines)) == {"duplicate"}
        after = await db.fetch("SELECT sampled_at, xmin::text, ctid::text FROM sensor_readings"
                               " WHERE sensor_id = $1 ORDER BY sampled_at", sensor)
        assert after == before  # no new row version
    keys = [{"sensor_id": sensor, "sampled_at": BASE_MS + i} for i in range(300)]
    await run(http, keys, "delete")
    job, _ = await run(http, keys, "delete")
    assert job["counts"]["duplicates"] == 300


async def test_two_tenants_writing_the_same_values(stack: Stack, http: aiohttp.ClientSession,
                                                   db: asyncpg.Pool) -> None:
    sensor = tag_for("tenants")
    record = reading(sensor, 0, 7.0)
    _, lines = await run(http, [record], "insert")
    assert statuses(lines) == ["succeeded"]
    other = bearer(token_for(stack.auth, subject="bob", tenant="other-tenant"))
    async with aiohttp.ClientSession(stack.base_url, headers=other) as bob:
        # The key exists (an insert always tells that); its values are not confirmed.
        _, lines = await run(bob, [record], "insert")
        assert [(line["status"], line["code"]) for line in lines] == [("failed", "23505")]
        _, lines = await run(bob, [record], "upsert")
        assert statuses(lines) == ["succeeded"]
        _, lines = await run(bob, [record], "upsert")
        assert statuses(lines) == ["duplicate"]  # now bob's own row
    assert await db.fetchval("SELECT _sluice_tenant FROM sensor_readings WHERE sensor_id = $1",
                             sensor) == "other-tenant"


# --- bad rows ---------------------------------------------------------------------------


async def test_an_unindexable_key_fails_alone(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    sensor = tag_for("bigkey")
    huge = sensor + os.urandom(1500).hex()  # 3,000+ incompressible characters: 54000
    records = [reading(sensor, i) for i in range(500)]
    records.insert(250, reading(huge, 0))
    job, lines = await run(http, records, "insert")
    assert job["state"] == "completed_with_errors"
    assert job["counts"]["succeeded"] == 500 and job["counts"]["failed"] == 1
    (failed,) = [line for line in lines if line["status"] == "failed"]
    assert (failed["index"], failed["code"]) == (250, "54000")
    assert len(await values_of(db, sensor)) == 500


async def test_check_violations_fail_their_records_and_later_ones_see_the_row_unchanged(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    sensor = tag_for("chk")
    name = f"chk_{uuid.uuid4().hex[:8]}"
    await db.execute(f"ALTER TABLE sensor_readings ADD CONSTRAINT {name} "
                     f"CHECK (sensor_id <> '{sensor}' OR value >= 0)")
    try:
        # Row 0 is refused by the check; row 0 inserted again afterwards succeeds, because
        # the refused upsert left the key absent. Other rows are refused every 7th.
        records: list[Any] = [reading(sensor, 0, -1.0)]
        records += [reading(sensor, i, -1.0 if i % 7 == 0 else 1.0) for i in range(1, 1000)]
        records.append(reading(sensor, 0, 1.0))
        job, lines = await run(http, records, "upsert")
        bad = {i for i in range(1, 1000) if i % 7 == 0} | {0}
        failed = {line["index"]: line["code"] for line in lines if line["status"] == "failed"}
        assert failed == dict.fromkeys(bad, "23514")
        assert job["counts"]["succeeded"] == 1001 - len(bad)
        assert await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id = $1",
                                 sensor) == 1000 - len(bad) + 1
        assert await db.fetchval("SELECT value FROM sensor_readings WHERE sensor_id = $1 "
                                 "AND sampled_at = to_timestamp($2 / 1000.0)", sensor, BASE_MS) == 1.0
    finally:
        await db.execute(f"ALTER TABLE sensor_readings DROP CONSTRAINT {name}")


# --- undeliverable envelopes -----------------------------------------------------------


async def _job_row(db: asyncpg.Pool, records: int, target: str = "sensor_readings") -> str:
    """A job as a web process records it, for envelopes the test produces itself."""
    job_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO sluice_jobs (job_id, target, operation, source, state, records_received,"
        " tenant, principal, accepted_at) VALUES ($1, $2, 'insert', 'http', 'accepted', $3,"
        " 'dev', 'dev', now())", job_id, target, records)
    return job_id


async def _send(stack: Stack, value: bytes, partition: int,
                headers: list[tuple[str, bytes]] | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait("sluice.records", value, key=str(partition).encode(),
                                     partition=partition, headers=headers)
    finally:
        await producer.stop()


async def test_an_envelope_for_an_unknown_target_fails_its_records_and_its_job_ends(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    job_id = await _job_row(db, 3, "no_such_target")
    doc = {"v": 1, "job": job_id, "target": "no_such_target", "op": "insert", "src": None,
           "items": [[i, ["s", 1.0, 0], None, None] for i in range(3)]}
    await _send(stack, orjson.dumps(doc), 1)
    job = await wait_terminal(http, job_id, wait_s=60)
    assert job["counts"]["failed"] == 3, job
    lines = await results(http, job_id)
    assert {(line["status"], line["code"]) for line in lines} == {("failed", "unknown_target")}


async def test_a_corrupt_envelope_is_recorded_and_its_job_ends(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    job_id = await _job_row(db, 5)
    await _send(stack, b"\x00\x01 not an envelope", 2,
                [(JOB_HEADER, job_id.encode()), (RECORDS_HEADER, b"3")])
    # Readable job and indexes, unreadable rows: those records fail one by one.
    codec = EnvelopeCodec(TARGETS)
    good = orjson.loads(codec.encode(Envelope(job_id, "sensor_readings", "insert",
                                              [Item(3, ("x", 1.0, None)), Item(4, None, "c", "m")])))
    good["items"][0][1][2] = "not a timestamp"
    await _send(stack, orjson.dumps(good), 2)
    job = await wait_terminal(http, job_id, wait_s=60)
    assert job["counts"]["failed"] == 5 and job["state"] == "completed_with_errors", job
    assert await db.fetchval("SELECT records FROM sluice_undeliverable WHERE job_id = $1", job_id) == 3
    lines = await results(http, job_id)
    assert sorted((line["index"], line["code"]) for line in lines) == [
        (3, "malformed_envelope"), (4, "malformed_envelope")]


# --- the input topic --------------------------------------------------------------------


async def _wait_rows(db: asyncpg.Pool, sensor: str, predicate: Any, wait_s: float = 90) -> list[float]:
    deadline = time.monotonic() + wait_s
    while True:
        values = await values_of(db, sensor)
        if predicate(values) or time.monotonic() > deadline:
            return values
        await asyncio.sleep(0.3)


async def test_input_topic_applies_one_key_in_log_order(stack: Stack, db: asyncpg.Pool) -> None:
    sensor = tag_for("kaba")

    def message(value: float, operation: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        return (orjson.dumps(reading(sensor, 0, value)), [("sluice-operation", operation.encode())])

    key = orjson.dumps({"sensor_id": sensor, "sampled_at": BASE_MS})
    await asyncio.to_thread(produce, stack, [
        message(1.0, "upsert"), message(2.0, "upsert"), message(1.0, "upsert"),  # A-B-A
        (key, [("sluice-operation", b"delete")]), message(5.0, "insert"),  # delete, insert
    ])
    marker = tag_for("kaba-end")
    await asyncio.to_thread(produce, stack, [(orjson.dumps(reading(marker, 0)), [])])
    await _wait_rows(db, marker, lambda v: v == [0.0])
    assert await _wait_rows(db, sensor, lambda v: v == [5.0], wait_s=10) == [5.0]
    statuses_by_offset = await db.fetch(
        "SELECT r.status FROM sluice_record_results r JOIN sluice_jobs j USING (job_id)"
        " WHERE j.source = 'kafka' AND r.key::jsonb ->> 'sensor_id' = $1 ORDER BY r.idx", sensor)
    assert [r["status"] for r in statuses_by_offset] == ["succeeded"] * 5


async def test_input_topic_duplicates_inserts_and_bad_keys(stack: Stack, db: asyncpg.Pool) -> None:
    twice, idi, big = tag_for("ktwice"), tag_for("kidi"), tag_for("kbig")
    huge = big + os.urandom(1500).hex()

    def insert(record: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
        return orjson.dumps(record), [("sluice-operation", b"insert")]

    await asyncio.to_thread(produce, stack, [
        insert(reading(twice, 0, 3.0)), insert(reading(twice, 0, 3.0)),  # succeeded, duplicate
        insert(reading(idi, 0, 5.0)),
        (orjson.dumps({"sensor_id": idi, "sampled_at": BASE_MS}), [("sluice-operation", b"delete")]),
        insert(reading(idi, 0, 5.0)),  # insert, delete, insert: the row is back
        insert(reading(huge, 0)), insert(reading(big, 0)),  # 54000 alone, the next one goes in
    ])
    assert await _wait_rows(db, big, lambda v: v == [0.0]) == [0.0]
    assert await values_of(db, twice) == [3.0]
    assert await values_of(db, idi) == [5.0]

    async def outcomes(sensor: str) -> list[tuple[str, str | None]]:
        rows = await db.fetch(
            "SELECT r.status, r.code FROM sluice_record_results r JOIN sluice_jobs j USING (job_id)"
            " WHERE j.source = 'kafka' AND r.key::jsonb ->> 'sensor_id' = $1 ORDER BY r.idx", sensor)
        return [(r["status"], r["code"]) for r in rows]

    assert await outcomes(twice) == [("succeeded", None), ("duplicate", None)]
    assert await outcomes(idi) == [("succeeded", None)] * 3
    assert await outcomes(huge) == [("failed", "54000")]
