"""Many small jobs, the everyday load: clients each submitting a job, waiting for its end,
then submitting the next. A client either polls the job (every 20 ms, so it sees the end
within 20 ms of it) or asks to be answered at the end (`Prefer: wait`, answered 200).

What a client sees is the time from its POST to knowing the job's end; what the service
sees is the records per second of all the clients together.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from app.devtools.bench.client import Retries, check_counts, submit, submit_and_wait, wait_terminal
from app.devtools.bench.processes import Pipeline
from app.devtools.bench.stats import percentile
from app.devtools.bench.workload import ndjson

SMALL_JOB_POLL_S = 0.02
PREFER_WAIT_S = 30


@dataclass(frozen=True, slots=True)
class SmallJobsFigures:
    """Every job's latency (POST to terminal state seen) and the run's overall rate."""

    jobs: int
    records_per_job: int
    clients: int
    total_s: float
    latencies_s: list[float]
    states: tuple[str, ...]
    retries: dict[str, int] = field(default_factory=dict)
    answered_inline: int | None = None
    """With `Prefer: wait`: the jobs answered 200 (the others got 202 and were polled)."""

    @property
    def records(self) -> int:
        """Records in all the jobs."""
        return self.jobs * self.records_per_job

    @property
    def records_per_s(self) -> float:
        """Records of all clients together per second, first POST to last terminal state."""
        return self.records / self.total_s

    def latency_s(self, p: float) -> float:
        """The p-th percentile latency, POST to terminal state."""
        return percentile(self.latencies_s, p)

    def as_doc(self) -> dict[str, Any]:
        """JSON-ready figures (latency percentiles, not every latency)."""
        return {
            "label": f"{self.jobs:,} jobs x {self.records_per_job:,} records, {self.clients} clients",
            "jobs": self.jobs, "records_per_job": self.records_per_job, "clients": self.clients,
            "records": self.records, "total_s": self.total_s, "records_per_s": self.records_per_s,
            "p50_s": self.latency_s(50), "p90_s": self.latency_s(90), "p99_s": self.latency_s(99),
            "max_s": max(self.latencies_s), "poll_s": SMALL_JOB_POLL_S,
            "states": list(self.states), "retries": self.retries,
            "answered_inline": self.answered_inline,
        }


async def small_jobs_run(pipeline: Pipeline, tag: str, jobs: int, records: int, clients: int,
                         timeout_s: float = 300, *, inline: bool = False) -> SmallJobsFigures:
    """``jobs`` jobs of ``records`` records from ``clients`` clients, each one job at a time;
    ``inline``: each asks `Prefer: wait` and polls only a job answered 202."""
    bodies = [ndjson(f"{tag}-{k}", 0, records) for k in range(jobs)]
    latencies = [0.0] * jobs
    docs: list[dict[str, Any]] = [{} for _ in range(jobs)]
    retries = Retries()
    queue = iter(range(jobs))  # shared: each client takes the next job when it is free
    answered = 0

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal answered
        for k in queue:
            posted = time.perf_counter()
            ended = None
            if inline:
                job_id, ended = await submit_and_wait(http, pipeline.base_url, bodies[k], retries,
                                                      PREFER_WAIT_S)
                answered += ended is not None
            else:
                job_id = await submit(http, pipeline.base_url, bodies[k], retries)
            docs[k] = ended or await wait_terminal(http, pipeline.base_url, job_id, retries,
                                                   timeout_s, poll_s=SMALL_JOB_POLL_S)
            latencies[k] = time.perf_counter() - posted

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                     headers=pipeline.auth_headers,
                                     connector=aiohttp.TCPConnector(limit=clients)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(min(clients, jobs))))
        total = time.perf_counter() - started
    check_counts(docs, jobs * records)
    return SmallJobsFigures(jobs, records, clients, total, latencies,
                            tuple(sorted({d["state"] for d in docs})), retries.as_doc(),
                            answered if inline else None)
