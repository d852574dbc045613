"""The bench's HTTP calls to Sluice: submit, poll, scrape; refusals retried a bounded number of times.

A 429 or 503 says "not now" with a Retry-After: the bench waits that long and asks again, at
most ``MAX_RETRIES`` times per request, and counts every retry so that the figures show it.
A run refused more often than that fails loudly instead of measuring a waiting room.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from app.devtools.bench.workload import RECORDS, SECONDS, parse_metrics
from schemas.vocabulary import TERMINAL_STATES

TARGET = "sensor_readings"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
POLL_S = 0.05
MAX_RETRIES = 5
"""Refusals (429/503) one request may meet before the run fails."""
RETRYABLE = frozenset({429, 503})
MAX_RETRY_AFTER_S = 30.0
"""A Retry-After longer than this is waited for this long only: the bench must end."""


class BenchError(Exception):
    """A run that did not do what it measures (refused, incomplete, records missing)."""


@dataclass
class Retries:
    """Requests retried after a 429 or 503, by status: part of a run's figures."""

    by_status: Counter[int] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Every retry, whatever its status."""
        return sum(self.by_status.values())

    def as_doc(self) -> dict[str, int]:
        """JSON-ready: {"429": n, ...}."""
        return {str(status): n for status, n in sorted(self.by_status.items())}


def retry_after_s(header: str | None) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds; 1 s when absent or a date)."""
    try:
        seconds = float(header) if header is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


async def _request(http: aiohttp.ClientSession, method: str, url: str, retries: Retries,
                   **kwargs: Any) -> tuple[int, Any]:
    """The status and JSON answer of a request, after at most MAX_RETRIES refusals."""
    for attempt in range(MAX_RETRIES + 1):
        async with http.request(method, url, **kwargs) as r:
            answer = await r.json(content_type=None)
            if r.status not in RETRYABLE or attempt == MAX_RETRIES:
                return r.status, answer
            delay = retry_after_s(r.headers.get("Retry-After"))
        retries.by_status[r.status] += 1
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, str], float]:
    """The stage counters of a metrics endpoint."""
    async with http.get(f"{url}/metrics") as r:
        return parse_metrics(await r.text(), (SECONDS, RECORDS))


async def scrape_all(http: aiohttp.ClientSession, urls: list[str]) -> dict[tuple[str, str], float]:
    """The stage counters of several processes (the workers), added up."""
    total: dict[tuple[str, str], float] = {}
    for url in urls:
        for key, value in (await scrape(http, url)).items():
            total[key] = total.get(key, 0.0) + value
    return total


async def submit(http: aiohttp.ClientSession, base_url: str, body: bytes, retries: Retries,
                 content_type: str = NDJSON) -> str:
    """POST an insert into the target; its job id, or BenchError unless 202."""
    status, answer = await _request(
        http, "POST", f"{base_url}/v1/bulk-operations", retries,
        params={"target": TARGET, "operation": "insert"}, data=body,
        headers={"Content-Type": content_type})
    if status != 202:
        raise BenchError(f"submission refused: {status} {answer}")
    return str(answer["job_id"])


async def submit_and_wait(http: aiohttp.ClientSession, base_url: str, body: bytes,
                          retries: Retries, wait_s: int) -> tuple[str, dict[str, Any] | None]:
    """POST with ``Prefer: wait``: the job id, and the ended job when it was answered 200
    (None when the service answered 202: the job did not end within ``wait_s``)."""
    status, answer = await _request(
        http, "POST", f"{base_url}/v1/bulk-operations", retries,
        params={"target": TARGET, "operation": "insert"}, data=body,
        headers={"Content-Type": NDJSON, "Prefer": f"wait={wait_s}"})
    if status not in (200, 202):
        raise BenchError(f"submission refused: {status} {answer}")
    return str(answer["job_id"]), (answer if status == 200 else None)


async def job(http: aiohttp.ClientSession, base_url: str, job_id: str, retries: Retries) -> dict[str, Any]:
    """The job's state and counts now."""
    status, answer = await _request(http, "GET", f"{base_url}/v1/bulk-operations/{job_id}", retries)
    if status != 200:
        raise BenchError(f"job {job_id}: {status} {answer}")
    doc: dict[str, Any] = answer
    return doc


async def wait_terminal(http: aiohttp.ClientSession, base_url: str, job_id: str, retries: Retries,
                        timeout_s: float, poll_s: float = POLL_S) -> dict[str, Any]:
    """Poll the job every ``poll_s`` until it reaches a terminal state."""
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await job(http, base_url, job_id, retries)
        if doc["state"] in TERMINAL_STATES:
            return doc
        if time.monotonic() > deadline:
            raise BenchError(f"job {job_id} still {doc['state']} after {timeout_s:.0f} s")
        await asyncio.sleep(poll_s)


def check_counts(jobs: list[dict[str, Any]], records: int, failed: int = 0) -> None:
    """Every record succeeded except exactly ``failed``, none a duplicate; BenchError otherwise."""
    counts = {k: sum(j["counts"][k] for j in jobs) for k in ("succeeded", "failed", "duplicates")}
    if counts != {"succeeded": records - failed, "failed": failed, "duplicates": 0}:
        raise BenchError(f"counts {counts} for {records} records, {failed} expected to fail: "
                         f"{[j.get('job_id') for j in jobs][:20]}")
