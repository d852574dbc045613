"""The measured runs: HTTP submissions, producers on the input topic, and a raw COPY."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from app.devtools.bench.processes import Pipeline, rss_bytes
from app.devtools.bench.workload import (
    DIRTY_CHECK,
    RECORDS,
    SECONDS,
    DirtyMix,
    StageFigure,
    copy_rows,
    dirty_existing_rows,
    dirty_ndjson,
    ndjson,
    parse_metrics,
    reading,
    stage_deltas,
)
from app.topics import TopicNames
from schemas.vocabulary import TERMINAL_STATES

TARGET = "sensor_readings"
WEB_STAGES = ("parse", "produce")
WORKER_STAGES = ("consume", "write", "publish", "report")
POLL_S = 0.05


class BenchError(Exception):
    """A run that did not do what it measures (refused, incomplete, records missing)."""


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One HTTP run: its size, its timings and the stages' share."""

    records: int
    payload_bytes: int
    to_202_s: float
    """Until the last submission of the run was accepted."""
    total_s: float
    """Until the last job of the run reached a terminal state."""
    states: tuple[str, ...]
    stages: list[StageFigure]
    peak_web_rss_bytes: int | None = None
    failed: int = 0
    peak_worker_rss_bytes: int = 0
    """Sampled every 20 ms from the first byte to the last job's end."""

    @property
    def records_per_s(self) -> float:
        """End-to-end records per second."""
        return self.records / self.total_s


async def _scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, str], float]:
    async with http.get(f"{url}/metrics") as r:
        return parse_metrics(await r.text(), (SECONDS, RECORDS))


async def _submit(http: aiohttp.ClientSession, base_url: str, body: bytes) -> str:
    async with http.post(f"{base_url}/v1/bulk-operations",
                         params={"target": TARGET, "operation": "insert"},
                         data=body, headers={"Content-Type": "application/x-ndjson"}) as r:
        answer = await r.json(content_type=None)
        if r.status != 202:
            raise BenchError(f"submission refused: {r.status} {answer}")
        return str(answer["job_id"])


async def _wait_terminal(http: aiohttp.ClientSession, base_url: str, job_id: str,
                         timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{base_url}/v1/bulk-operations/{job_id}") as r:
            job: dict[str, Any] = await r.json()
        if job["state"] in TERMINAL_STATES:
            return job
        if time.monotonic() > deadline:
            raise BenchError(f"job {job_id} still {job['state']} after {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)


async def _watch_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    """Sample a process's resident memory every 20 ms, keeping the highest."""
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes(pid))
        await asyncio.sleep(0.02)


async def http_run(pipeline: Pipeline, bodies: list[tuple[bytes, int]], *,
                   timeout_s: float = 600, watch_web_rss: bool = False,
                   failed: int = 0) -> RunFigures:
    """Submit the bodies concurrently, wait for every job; figures from first byte to last job.

    Every record must succeed except exactly ``failed`` of them, none a duplicate.
    """
    records = sum(n for _, n in bodies)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                     headers=pipeline.auth_headers) as http:
        web_before = await _scrape(http, pipeline.web_metrics_url)
        worker_before = await _scrape(http, pipeline.worker_metrics_url)
        peak, worker_peak = [0], [0]
        stop_watch, stop_worker_watch = asyncio.Event(), asyncio.Event()
        watcher = (asyncio.create_task(_watch_rss(pipeline.web.pid, peak, stop_watch))
                   if watch_web_rss else None)
        worker_watcher = asyncio.create_task(
            _watch_rss(pipeline.worker.pid, worker_peak, stop_worker_watch))
        started = time.perf_counter()
        try:
            try:
                job_ids = await asyncio.gather(
                    *(_submit(http, pipeline.base_url, b) for b, _ in bodies))
            finally:
                stop_watch.set()
                if watcher is not None:
                    await watcher
            to_202 = time.perf_counter() - started
            jobs = await asyncio.gather(
                *(_wait_terminal(http, pipeline.base_url, j, timeout_s) for j in job_ids))
            total = time.perf_counter() - started
        finally:
            stop_worker_watch.set()
            await worker_watcher
        counts = {k: sum(j["counts"][k] for j in jobs) for k in ("succeeded", "failed", "duplicates")}
        if counts != {"succeeded": records - failed, "failed": failed, "duplicates": 0}:
            raise BenchError(f"counts {counts} for {records} records, {failed} expected to fail: {jobs}")
        await asyncio.sleep(0.5)  # let the report agent see the last results
        web_after = await _scrape(http, pipeline.web_metrics_url)
        worker_after = await _scrape(http, pipeline.worker_metrics_url)
    stages = [*stage_deltas(web_before, web_after, WEB_STAGES),
              *stage_deltas(worker_before, worker_after, WORKER_STAGES)]
    return RunFigures(records, sum(len(b) for b, _ in bodies), to_202, total,
                      tuple(j["state"] for j in jobs), stages, peak[0] if watch_web_rss else None,
                      failed, worker_peak[0])


async def warm_up(pipeline: Pipeline, tag: str) -> None:
    """One small job through the whole pipeline: the worker has joined its group after it."""
    await http_run(pipeline, [(ndjson(tag, 0, 10), 10)], timeout_s=120)


@dataclass(frozen=True, slots=True)
class ProducerFigures:
    """Records written straight to a target's input topic, until all were applied."""

    records: int
    produce_s: float
    total_s: float

    @property
    def records_per_s(self) -> float:
        """End-to-end records per second, from the first send to the last row written."""
        return self.records / self.total_s


async def producer_run(pipeline: Pipeline, kafka: str, dsn: str, tag: str, records: int,
                       timeout_s: float = 600) -> ProducerFigures:
    """Produce JSON records one message each, as producers do, then wait for their outcomes."""
    topic = TopicNames(pipeline.topic_prefix).input_for(TARGET)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    try:
        started = time.perf_counter()
        sent = [await producer.send(topic, orjson.dumps(reading(tag, i))) for i in range(records)]
        await asyncio.gather(*sent)
        produced = time.perf_counter() - started
        deadline = time.monotonic() + timeout_s
        while await _applied_from(pool, topic) < records:
            if time.monotonic() > deadline:
                raise BenchError(f"producer records not all applied after {timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)
        return ProducerFigures(records, produced, time.perf_counter() - started)
    finally:
        await producer.stop()
        await pool.close()


async def _applied_from(pool: asyncpg.Pool, topic: str) -> int:
    """Records of an input topic with an outcome (its jobs are named "<topic>:<partition>")."""
    return int(await pool.fetchval(
        "SELECT coalesce(sum(succeeded + failed + duplicates), 0) FROM sluice_jobs"
        " WHERE job_id LIKE $1", topic.replace("_", r"\_") + ":%",
    ))


async def dirty_run(pipeline: Pipeline, dsn: str, tag: str, records: int) -> RunFigures:
    """One payload with invalid records, existing keys of other values and CHECK-breaking
    rows (the constraint added for the run only); counts must come out exact."""
    mix = DirtyMix()
    expected = mix.counts(records)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(TARGET, records=list(dirty_existing_rows(tag, records, mix)),
                                         columns=["sensor_id", "value", "sampled_at"])
        # NOT VALID: enforced for new rows without scanning the rows already there.
        await conn.execute(f"ALTER TABLE {TARGET} ADD CONSTRAINT sluice_bench_dirty {DIRTY_CHECK} NOT VALID")
        try:
            return await http_run(pipeline, [(dirty_ndjson(tag, records, mix), records)],
                                  failed=sum(expected.values()))
        finally:
            await conn.execute(f"ALTER TABLE {TARGET} DROP CONSTRAINT sluice_bench_dirty")
    finally:
        await conn.close()


async def copy_baseline(dsn: str, tag: str, records: int) -> float:
    """Seconds for one raw COPY of the same rows into a scratch copy of the target table."""
    rows = list(copy_rows(tag, records))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS sluice_bench_copy")
        await conn.execute(f"CREATE TABLE sluice_bench_copy (LIKE {TARGET} INCLUDING ALL)")
        started = time.perf_counter()
        await conn.copy_records_to_table("sluice_bench_copy", records=rows,
                                         columns=["sensor_id", "value", "sampled_at"])
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE sluice_bench_copy")
        return elapsed
    finally:
        await conn.close()


def progress(out: Callable[[str], None]) -> Callable[[str], None]:
    """A progress line printer that stamps the time since the bench started."""
    started = time.perf_counter()
    return lambda message: out(f"[{time.perf_counter() - started:6.1f} s] {message}")
