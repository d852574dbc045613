"""The single NDJSON payload again, with many live event streams open on the same web
process: what watchers cost the submitter (web/job_events.py reads watched jobs once per
tick for all of them).

Each watcher follows its tenant's jobs over Server-Sent Events and reads every event, as
the dashboard does; the run's figures are the submitter's, with the watchers' counts.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from app.devtools.bench.processes import Pipeline
from app.devtools.bench.scenarios import http_run
from app.devtools.bench.workload import ndjson

EVENTS_PATH = "/v1/events"
CONNECT_WAIT_S = 2.0
"""Time for every watcher's stream to be open before the payload is sent."""


@dataclass
class WatcherCounts:
    """What the watchers saw."""

    connected: int = 0
    events: list[int] = field(default_factory=list)
    saw_end: int = 0


async def _watch(http: aiohttp.ClientSession, url: str, counts: WatcherCounts, job_ended: asyncio.Event,
                 index: int) -> None:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
        if r.status != 200:
            raise RuntimeError(f"watcher {index}: {r.status} {await r.text()}")
        counts.connected += 1
        async for line in r.content:
            if line.startswith(b"event: "):
                counts.events[index] += 1
                if line.startswith(b"event: ended") and job_ended.is_set():
                    counts.saw_end += 1
                    return


async def watched_run(pipeline: Pipeline, tag: str, records: int, watchers: int) -> dict[str, Any]:
    """``records`` in one payload while ``watchers`` streams follow the bench's tenant."""
    counts = WatcherCounts(events=[0] * watchers)
    sent = asyncio.Event()
    # One connection per stream: aiohttp's default pool holds 100.
    async with aiohttp.ClientSession(headers=pipeline.auth_headers,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        streams = [asyncio.create_task(_watch(http, pipeline.base_url + EVENTS_PATH, counts, sent, i))
                   for i in range(watchers)]
        try:
            await asyncio.sleep(CONNECT_WAIT_S)
            if counts.connected < watchers:
                raise RuntimeError(f"{watchers - counts.connected} of {watchers} event streams "
                                   f"did not open within {CONNECT_WAIT_S:g} s")
            sent.set()
            run = await http_run(pipeline, [(ndjson(tag, 0, records), records)])
            with contextlib.suppress(TimeoutError):  # the end reaches them within a tick or two
                await asyncio.wait_for(asyncio.gather(*streams), 10)
        finally:
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    return {**run.as_doc(f"1 x {records:,} NDJSON, {watchers} event streams open"),
            "watchers": watchers, "watchers_saw_end": counts.saw_end,
            "events_per_watcher": sum(counts.events) / watchers}
