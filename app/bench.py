"""`sluice bench`: end-to-end records/s of a running stack, beside a raw COPY of the same rows.

The raw COPY is the ceiling: the same rows, one COPY into a scratch copy of the target
table, no Kafka, no validation, no deduplication, no bookkeeping.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from app.devauth import local_stack_headers
from app.settings import Settings, get_settings

STACK_FILE = "stack.json"
"""Written by `sluice run` into the data folder: how to reach the services it started."""

_BASE = datetime(2024, 1, 1, tzinfo=UTC)


def generate(n: int, run_id: str) -> tuple[bytes, list[tuple[str, float, datetime]]]:
    """N distinct sensor readings as an NDJSON body and as rows for COPY."""
    rows = [(f"bench-{run_id}-{i % 1000}", i * 0.25, _BASE + timedelta(milliseconds=i))
            for i in range(n)]
    body = b"".join(
        orjson.dumps({"sensor_id": s, "value": v, "sampled_at": int(ts.timestamp() * 1000)}) + b"\n"
        for s, v, ts in rows
    )
    return body, rows


def database_url(settings: Settings) -> str:
    """The configured DSN, or the one `sluice run` recorded for its embedded PostgreSQL."""
    if settings.database_url:
        return settings.database_url.get_secret_value()
    stack = Path(settings.data_dir) / STACK_FILE
    if not stack.exists():
        raise SystemExit("no database configured and no running `sluice run` found "
                         f"({stack} missing): start `make run` first")
    return str(orjson.loads(stack.read_bytes())["database_url"])


async def copy_baseline(dsn: str, rows: list[tuple[str, float, datetime]]) -> float:
    """Seconds for one raw COPY of the rows into a scratch copy of the target table."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS sluice_bench_copy")
        await conn.execute("CREATE TABLE sluice_bench_copy (LIKE sensor_readings INCLUDING ALL)")
        started = time.perf_counter()
        await conn.copy_records_to_table("sluice_bench_copy", records=rows,
                                         columns=["sensor_id", "value", "sampled_at"])
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE sluice_bench_copy")
        return elapsed
    finally:
        await conn.close()


async def end_to_end(base_url: str, body: bytes, wait_s: float) -> dict[str, Any]:
    """Submit, then poll until terminal: seconds to 202 and to the terminal state."""
    async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(total=None),
                                     headers=local_stack_headers(get_settings())) as http:
        started = time.perf_counter()
        async with http.post("/v1/bulk-operations",
                             params={"target": "sensor_readings", "operation": "insert"},
                             data=body, headers={"Content-Type": "application/x-ndjson"}) as r:
            accepted = await r.json(content_type=None)
            if r.status != 202:
                raise SystemExit(f"submission refused: {r.status} {accepted}")
        to_202 = time.perf_counter() - started
        job: dict[str, Any] = {}
        while time.perf_counter() - started < wait_s:
            async with http.get(f"/v1/bulk-operations/{accepted['job_id']}") as r:
                job = await r.json()
            if job["state"] not in ("accepted", "processing"):
                break
            await asyncio.sleep(0.05)
        return {"job": job, "to_202_s": to_202, "total_s": time.perf_counter() - started}


def render(figures: dict[str, Any]) -> str:
    """The figures as a table for people."""
    rows = [
        ("records", f"{figures['records']:,}"),
        ("payload", f"{figures['payload_mb']:.1f} MB NDJSON"),
        ("job state", figures["state"]),
        ("time to 202", f"{figures['to_202_s']:.2f} s"),
        ("end to end", f"{figures['end_to_end_s']:.2f} s  ->  "
                       f"{figures['end_to_end_records_per_s']:,.0f} records/s"),
        ("raw COPY", f"{figures['copy_s']:.2f} s  ->  {figures['copy_records_per_s']:,.0f} records/s"),
        ("ratio", f"end to end = {figures['ratio_to_copy']:.1%} of raw COPY"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


async def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    settings = get_settings()
    base_url = args.url or f"http://{settings.http_host}:{settings.http_port}"
    run_id = uuid.uuid4().hex[:8]
    body, rows = generate(args.records, run_id)
    run = await end_to_end(base_url, body, wait_s=600)
    copy_s = await copy_baseline(database_url(settings), rows)
    counts = run["job"].get("counts", {})
    if counts.get("succeeded") != args.records:
        raise SystemExit(f"benchmark job did not apply every record: {run['job']}")
    figures = {
        "records": args.records,
        "payload_mb": len(body) / 1e6,
        "state": run["job"]["state"],
        "to_202_s": run["to_202_s"],
        "end_to_end_s": run["total_s"],
        "end_to_end_records_per_s": args.records / run["total_s"],
        "copy_s": copy_s,
        "copy_records_per_s": args.records / copy_s,
        "ratio_to_copy": copy_s / run["total_s"],
    }
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else render(figures))
    return 0
