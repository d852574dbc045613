"""The web process's operational endpoints against the running stack: metrics on a port of
their own that a scrape cannot turn into database load, and a readiness check that a flood of
probes cannot turn into a flood of round trips to PostgreSQL, Redis and Kafka."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as redis

from app.devtools.embedded import free_port
from app.settings import BUILTIN_TARGETS_DIR, env_var
from app.store import jobs
from tests.integration.conftest import Stack

QUEUE_GAUGES = ("sluice_queue_depth_records", "sluice_oldest_pending_job_seconds")


def _metrics_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env[env_var('web_metrics_port')]}/metrics"


async def test_metrics_are_served_on_their_own_port_and_not_on_the_api_port(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get("/healthz") as r:  # an API request, to be seen in the latency histogram
        assert r.status == 200
    async with aiohttp.ClientSession() as anonymous, anonymous.get(_metrics_url(stack)) as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        text = await r.text()
    for name in (*QUEUE_GAUGES, "sluice_http_request_seconds_bucket", "sluice_stalled_jobs"):
        assert name in text
    async with http.get("/metrics") as r:
        assert r.status == 404
        assert r.content_type == "application/problem+json"


async def test_a_scrape_answers_while_the_jobs_table_is_locked(
    stack: Stack, db: asyncpg.Pool
) -> None:
    """A scrape runs no query: it answers even while nothing can read ``sluice_jobs``
    (before, each scrape ran the backlog aggregate and hung behind the lock)."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE sluice_jobs IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as anonymous:
            try:
                async with anonymous.get(_metrics_url(stack)) as r:
                    assert r.status == 200
                    text = await r.text()
                    assert all(name in text for name in QUEUE_GAUGES)
            except TimeoutError:
                raise AssertionError("the scrape waited for the locked jobs table") from None
        print(f"scrape while sluice_jobs is locked: {time.perf_counter() - started:.3f} s")


class _Capture:
    """Stands in for a pool to learn the SQL the backlog read runs."""

    def __init__(self) -> None:
        self.sql = ""

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.sql = sql
        return []


async def test_the_backlog_query_reads_an_index_not_the_whole_jobs_table(db: asyncpg.Pool) -> None:
    """Finished jobs pile up for the whole retention; the backlog (read for admission and
    the queue gauges) looks only at unfinished ones, through a partial index."""
    capture = _Capture()
    await jobs.pending_work_by_tenant(capture)
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:  # rolled back: the session's other tests never see these rows
            await conn.execute(
                "INSERT INTO sluice_jobs (job_id, target, operation, source, state, accepted_at,"
                " completed_at, records_received, succeeded)"
                " SELECT 'explain-' || i, 'sensor_readings', 'insert', 'http', 'completed',"
                " now(), now(), 10, 10 FROM generate_series(1, 50000) i")
            await conn.execute(
                "INSERT INTO sluice_jobs (job_id, target, operation, source, state, accepted_at,"
                " records_received) SELECT 'explain-run-' || i, 'sensor_readings', 'insert',"
                " 'http', 'processing', now(), 10 FROM generate_series(1, 5) i")
            await conn.execute("ANALYZE sluice_jobs")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + capture.sql))
        finally:
            await tx.rollback()
    print(plan)
    assert "Seq Scan on sluice_jobs" not in plan, plan
    assert "sluice_jobs_unfinished" in plan, plan


async def _pings(client: redis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def test_readiness_is_checked_once_for_a_burst_of_probes(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    client = redis.from_url(stack.redis_url)
    try:
        before = await _pings(client)

        async def probe() -> dict[str, Any]:
            async with http.get("/readyz") as r:
                assert r.status == 200
                body: dict[str, Any] = await r.json()
                return body

        answers = await asyncio.gather(*(probe() for _ in range(40)))
        answers += [await probe() for _ in range(20)]
        checked = await _pings(client) - before
    finally:
        await client.aclose()
    assert all(a["checks"] == {"postgresql": "ok", "redis": "ok", "kafka": "ok"} for a in answers)
    print(f"60 /readyz answered with {checked} Redis PING(s)")
    assert checked <= 3, f"{checked} readiness checks for 60 probes"


@pytest.mark.parametrize("command", ["web", "worker"])
def test_a_target_named_like_sluices_own_tables_stops_the_process_at_start(
    stack: Stack, tmp_path: Path, command: str
) -> None:
    # A target called sluice_jobs would have its rows written into the job store.
    shutil.copy(BUILTIN_TARGETS_DIR / "sensor_readings.avsc", tmp_path)
    schema = json.loads((BUILTIN_TARGETS_DIR / "sensor_readings.avsc").read_text())
    (tmp_path / "jobs.avsc").write_text(json.dumps({**schema, "name": "sluice_jobs"}))
    env = {**stack.env, env_var("targets_dir"): str(tmp_path), env_var("http_port"): str(free_port()),
           env_var("web_metrics_port"): "0", env_var("worker_metrics_port"): "0",
           # a group of its own: were the name let through, it must not join the suite's worker
           env_var("worker_id"): f"reserved-{uuid.uuid4().hex[:8]}"}
    done = subprocess.run([sys.executable, "-m", "app.cli", command], env=env, capture_output=True,
                          timeout=120)
    assert done.returncode != 0
    assert b"'sluice_jobs' is a reserved name" in done.stdout + done.stderr
