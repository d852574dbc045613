"""The measured runs: HTTP submissions, producers on the input topic, and a raw COPY."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson
from confluent_kafka import Producer

from app.devtools.bench.client import (
    NDJSON,
    POLL_S,
    TARGET,
    BenchError,
    Retries,
    check_counts,
    scrape,
    scrape_all,
    submit,
    wait_terminal,
)
from app.devtools.bench.processes import Pipeline, RssWatch
from app.devtools.bench.workload import (
    DIRTY_CHECK,
    DirtyMix,
    StageFigure,
    copy_rows,
    dirty_existing_rows,
    dirty_ndjson,
    ndjson,
    reading,
    stage_deltas,
)
from app.topics import TopicNames

WEB_STAGES = ("parse", "produce")
WORKER_STAGES = ("consume", "write", "publish", "report")


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
    retries: dict[str, int] = field(default_factory=dict)
    """Requests retried after a 429/503, by status."""

    @property
    def records_per_s(self) -> float:
        """End-to-end records per second."""
        return self.records / self.total_s

    def as_doc(self, label: str) -> dict[str, Any]:
        """JSON-ready figures (MB are MiB for memory, 10^6 bytes for payloads)."""
        return {
            "label": label, "records": self.records, "payload_mb": self.payload_bytes / 1e6,
            "to_202_s": self.to_202_s, "total_s": self.total_s, "records_per_s": self.records_per_s,
            "states": sorted(set(self.states)), "peak_web_rss_mb": (
                self.peak_web_rss_bytes / 2**20 if self.peak_web_rss_bytes is not None else None),
            "peak_worker_rss_mb": self.peak_worker_rss_bytes / 2**20, "retries": self.retries,
            "stages": [{**asdict(s), "records_per_s": s.records_per_s} for s in self.stages],
        }


async def http_run(pipeline: Pipeline, bodies: list[tuple[bytes, int]], *,
                   timeout_s: float = 600, watch_web_rss: bool = False,
                   failed: int = 0, content_type: str = NDJSON) -> RunFigures:
    """Submit the bodies concurrently, wait for every job; figures from first byte to last job.

    Every record must succeed except exactly ``failed`` of them, none a duplicate.
    """
    records = sum(n for _, n in bodies)
    retries = Retries()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                     headers=pipeline.auth_headers) as http:
        web_before = await scrape(http, pipeline.web_metrics_url)
        worker_before = await scrape_all(http, pipeline.worker_metrics_urls)
        web_watch = RssWatch(pipeline.web.pid).start() if watch_web_rss else None
        worker_watch = RssWatch(*pipeline.worker_pids).start()
        started = time.perf_counter()
        try:
            try:
                job_ids = await asyncio.gather(
                    *(submit(http, pipeline.base_url, b, retries, content_type) for b, _ in bodies))
            finally:
                web_peak = await web_watch.stop() if web_watch is not None else None
            to_202 = time.perf_counter() - started
            jobs = await asyncio.gather(
                *(wait_terminal(http, pipeline.base_url, j, retries, timeout_s) for j in job_ids))
            total = time.perf_counter() - started
        finally:
            worker_peak = await worker_watch.stop()
        check_counts(jobs, records, failed)
        await asyncio.sleep(0.5)  # let the report agent see the last results
        web_after = await scrape(http, pipeline.web_metrics_url)
        worker_after = await scrape_all(http, pipeline.worker_metrics_urls)
    stages = [*stage_deltas(web_before, web_after, WEB_STAGES),
              *stage_deltas(worker_before, worker_after, WORKER_STAGES)]
    return RunFigures(records, sum(len(b) for b, _ in bodies), to_202, total,
                      tuple(j["state"] for j in jobs), stages, web_peak, failed, worker_peak,
                      retries.as_doc())


async def warm_up(pipeline: Pipeline, tag: str, partitions: int, timeout_s: float = 120) -> None:
    """Wait until the workers' group has settled (every worker holds partitions, all of them
    held), then one small job through the whole pipeline: no run is measured across a
    rebalance of workers still joining."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            held = [await _partitions_held(http, url) for url in pipeline.worker_metrics_urls]
            if sum(held) == partitions and sum(map(bool, held)) == min(len(held), partitions):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"workers hold {held} of {partitions} partitions after {timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)
    await http_run(pipeline, [(ndjson(tag, 0, 10), 10)], timeout_s=timeout_s)


async def _partitions_held(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("sluice_records_partitions_assigned "):
                return int(float(line.split()[1]))
    return 0


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

    def as_doc(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {"label": "producers -> input topic", **asdict(self), "records_per_s": self.records_per_s}


def produce_readings(kafka: str, topic: str, tag: str, records: int) -> None:
    """Write the records one message each with librdkafka (C), as a fast producer would:
    the bench's own client must not be what limits the figure."""
    producer = Producer({"bootstrap.servers": kafka, "acks": "all", "linger.ms": 5,
                         "batch.size": 256 * 1024})
    failed: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failed.append(str(error))

    for i in range(records):
        while True:
            try:
                producer.produce(topic, orjson.dumps(reading(tag, i)), on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or failed:
        raise BenchError(f"producer records not all acknowledged: {failed[:3]}")


async def producer_run(pipeline: Pipeline, kafka: str, dsn: str, tag: str, records: int,
                       timeout_s: float = 600) -> ProducerFigures:
    """Produce JSON records one message each, as producers do, then wait for their outcomes."""
    topic = TopicNames(pipeline.topic_prefix).input_for(TARGET)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    try:
        started = time.perf_counter()
        await asyncio.to_thread(produce_readings, kafka, topic, tag, records)
        produced = time.perf_counter() - started
        deadline = time.monotonic() + timeout_s
        while await _applied_from(pool, topic) < records:
            if time.monotonic() > deadline:
                raise BenchError(f"producer records not all applied after {timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)
        return ProducerFigures(records, produced, time.perf_counter() - started)
    finally:
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
