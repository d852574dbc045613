"""Helpers shared by the integration tests: generated readings, submitting, waiting for jobs,
checking exact counts, reading job reports from Kafka."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from app.store import jobs

NDJSON = {"Content-Type": "application/x-ndjson"}
REPORTS = "sluice.job-reports"
BASE_MS = 1_696_161_600_000  # 2023-10-01T12:00:00Z


def reading(sensor: str, i: int, value: float | None = None) -> dict[str, Any]:
    return {"sensor_id": sensor, "value": float(i) if value is None else value,
            "sampled_at": BASE_MS + i}


def ndjson(records: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


async def submit(http: aiohttp.ClientSession, body: bytes, *, operation: str = "insert",
                 headers: dict[str, str] | None = None,
                 target: str = "sensor_readings") -> dict[str, Any]:
    """POST a payload and insist on 202."""
    async with http.post("/v1/bulk-operations", params={"target": target, "operation": operation},
                         data=body, headers=headers or NDJSON) as r:
        doc: dict[str, Any] = await r.json(content_type=None)
        assert r.status == 202, doc
        assert r.headers["Location"] == f"/v1/bulk-operations/{doc['job_id']}"
        return doc


async def wait_terminal(http: aiohttp.ClientSession, job_id: str, wait_s: float = 120) -> dict[str, Any]:
    """Poll a job until it is in a terminal state."""
    deadline = time.monotonic() + wait_s
    while True:
        async with http.get(f"/v1/bulk-operations/{job_id}") as r:
            assert r.status == 200, await r.text()
            job: dict[str, Any] = await r.json()
        if job["state"] in ("completed", "completed_with_errors", "failed"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {wait_s}s: {job}")
        await asyncio.sleep(0.2)


async def results(http: aiohttp.ClientSession, job_id: str, status: str = "all") -> list[dict[str, Any]]:
    """A job's result lines, parsed."""
    import orjson

    async with http.get(f"/v1/bulk-operations/{job_id}/results", params={"status": status}) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/x-ndjson"
        body = await r.read()
    return [orjson.loads(line) for line in body.splitlines() if line]


async def job_of(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    async with http.get(f"/v1/bulk-operations/{job_id}") as r:
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc


async def wait_progress(http: aiohttp.ClientSession, job_id: str, at_least: int,
                        wait_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        job = await job_of(http, job_id)
        if job["counts"]["succeeded"] >= at_least:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} made no progress to {at_least}: {job}")


async def job_running_until_aborted(db: asyncpg.Pool, tenant: str, records: int = 1) -> str:
    """An accepted job of ``tenant`` whose records are not in Kafka: no worker ends it, so
    it stays running (and queued) until aborted."""
    job_id = str(uuid.uuid4())
    await jobs.create_receiving(db, job_id, "sensor_readings", "insert", records,
                                seal_within_s=60, tenant=tenant)
    await jobs.seal(db, job_id)
    return job_id


def big_job(tag: str, n: int, invalid_every: int = 20_000) -> tuple[bytes, int]:
    """n distinct readings, one in every ``invalid_every`` invalid; returns (body, invalid)."""
    records: list[Any] = [reading(f"{tag}-{i % 997}", i) for i in range(n)]
    invalid = 0
    for i in range(invalid_every // 2, n, invalid_every):
        records[i] = {"sensor_id": tag, "value": "bad", "sampled_at": 0}
        invalid += 1
    return ndjson(records), invalid


async def assert_exactly_once(http: aiohttp.ClientSession, dsn: str, job_id: str, tag: str,
                              n: int, invalid: int) -> None:
    """Counts exact, every valid row present once, one result line per record."""
    job = await wait_terminal(http, job_id, wait_s=300)
    assert job["state"] == "completed_with_errors", job
    # A record applied twice would show as a 23505 failure or a duplicate here.
    assert job["counts"] == {"received": n, "succeeded": n - invalid, "failed": invalid,
                             "duplicates": 0, "aborted": 0}
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval(
            "SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1", tag + "-%"
        ) == n - invalid
        assert await conn.fetchval(
            "SELECT count(*) FROM sluice_record_results WHERE job_id = $1", job_id) == n
    finally:
        await conn.close()


def reader_from_beginning(bootstrap: str, topic: str) -> Consumer:
    """A consumer of every partition of ``topic`` from its first offset, without joining a
    group (a group join costs seconds on the embedded broker)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    return consumer


def reports_for(bootstrap: str, job_ids: set[str], timeout: float = 60, topic: str = REPORTS
                ) -> dict[str, list[dict[str, Any]]]:
    """Every report of these jobs on the job-reports topic (read from the beginning)."""
    consumer = reader_from_beginning(bootstrap, topic)
    found: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout
    try:
        while set(found) < job_ids and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            report = orjson.loads(message.value())
            if report["job_id"] in job_ids:
                assert message.key() == report["job_id"].encode()
                found.setdefault(report["job_id"], []).append(report)
        # A little longer, to see a second report if there were one.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                report = orjson.loads(message.value())
                if report["job_id"] in job_ids:
                    found.setdefault(report["job_id"], []).append(report)
    finally:
        consumer.close()
    return found
