"""A long run: many records as consecutive payloads, the web and worker memory sampled
throughout, to see whether either grows with what it has handled.

Payloads go one at a time (the next once the previous is terminal), so that each payload's
peak belongs to it alone; the first payload's peaks are the baseline the last one's are
held against (goals.rss_flat).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from app.devtools.bench.client import Retries, check_counts, submit, wait_terminal
from app.devtools.bench.processes import Pipeline, RssWatch
from app.devtools.bench.workload import ndjson

LONG_PAYLOAD_RECORDS = 1_000_000


def payload_sizes(records: int, each: int) -> list[int]:
    """``records`` cut into payloads of ``each`` (the last one smaller if need be)."""
    if records <= 0 or each <= 0:
        return []
    full, rest = divmod(records, each)
    return [each] * full + ([rest] if rest else [])


@dataclass(frozen=True, slots=True)
class PayloadFigures:
    """One payload of the long run: its time, and both processes' peak RSS while it ran."""

    records: int
    seconds: float
    peak_web_rss_bytes: int
    peak_worker_rss_bytes: int


@dataclass(frozen=True, slots=True)
class LongRunFigures:
    """Every payload of the long run, in order."""

    payloads: list[PayloadFigures]
    payload_records: int
    peak_web_rss_bytes: int
    peak_worker_rss_bytes: int
    retries: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Records in all payloads."""
        return sum(p.records for p in self.payloads)

    @property
    def seconds(self) -> float:
        """Time spent on the payloads (submission to terminal state, summed)."""
        return sum(p.seconds for p in self.payloads)

    @property
    def records_per_s(self) -> float:
        """Records per second of time spent on payloads."""
        return self.records / self.seconds

    def as_doc(self) -> dict[str, Any]:
        """JSON-ready figures, every payload's included."""
        return {
            "label": f"{self.records:,} records as {len(self.payloads)} payloads of "
                     f"{self.payload_records:,}",
            "records": self.records, "seconds": self.seconds, "records_per_s": self.records_per_s,
            "peak_web_rss_mb": self.peak_web_rss_bytes / 2**20,
            "peak_worker_rss_mb": self.peak_worker_rss_bytes / 2**20, "retries": self.retries,
            "payloads": [{"records": p.records, "seconds": p.seconds,
                          "records_per_s": p.records / p.seconds,
                          "peak_web_rss_mb": p.peak_web_rss_bytes / 2**20,
                          "peak_worker_rss_mb": p.peak_worker_rss_bytes / 2**20}
                         for p in self.payloads],
        }


async def long_run(pipeline: Pipeline, tag: str, records: int, each: int,
                   say: Callable[[str], None], timeout_s: float = 900) -> LongRunFigures:
    """Submit ``records`` as payloads of ``each``, one after the other, sampling RSS."""
    web, worker = RssWatch(pipeline.web.pid).start(), RssWatch(*pipeline.worker_pids).start()
    retries = Retries()
    payloads: list[PayloadFigures] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                         headers=pipeline.auth_headers) as http:
            sizes = payload_sizes(records, each)
            for k, n in enumerate(sizes):
                body = ndjson(f"{tag}-{k}", 0, n)
                web.new_window()
                worker.new_window()
                started = time.perf_counter()
                job_id = await submit(http, pipeline.base_url, body, retries)
                del body
                doc = await wait_terminal(http, pipeline.base_url, job_id, retries, timeout_s)
                check_counts([doc], n)
                payload = PayloadFigures(n, time.perf_counter() - started, web.new_window(),
                                         worker.new_window())
                payloads.append(payload)
                say(f"long run: payload {k + 1}/{len(sizes)} in {payload.seconds:.1f} s, web "
                    f"{payload.peak_web_rss_bytes / 2**20:.0f} MB, worker "
                    f"{payload.peak_worker_rss_bytes / 2**20:.0f} MB")
    finally:
        web_peak, worker_peak = await web.stop(), await worker.stop()
    return LongRunFigures(payloads, each, web_peak, worker_peak, retries.as_doc())
