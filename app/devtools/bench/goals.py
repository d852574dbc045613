"""The goals the bench's figures are held against (issue 12, "Throughput II", on 2 cores),
and the check of each figure against its goal: pure, from the figures' JSON document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

GOAL_RECORDS_PER_S = 60_000
"""End to end, one 1,000,000-record payload and 20 concurrent payloads of 50,000."""
GOAL_COPY_SHARE = 0.35
"""End to end as a share of a raw COPY of the same rows, measured in the same run."""
GOAL_PGLOADER_RATIO = 2.0
"""Sluice's rate over pgloader's, the same CSV file into the same PostgreSQL."""
GOAL_BIG_202_S = 10.0
GOAL_BIG_TERMINAL_S = 60.0
GOAL_WEB_RSS_BYTES = 300 * 2**20
GOAL_WORKER_RSS_BYTES = 500 * 2**20
"""Worker memory must not grow with what it has written (issue: correct writes)."""
GOAL_SMALL_JOBS_RECORDS_PER_S = 30_000
GOAL_SMALL_JOBS_P99_S = 1.0
GOAL_PRODUCER_RECORDS_PER_S = 50_000
GOAL_DIRTY_SHARE = 0.80
"""Dirty data (issue: correct writes) must cost about what the bad rows cost, not the batch."""
FLAT_RSS_FACTOR = 1.25
FLAT_RSS_SLACK_BYTES = 64 * 2**20
"""Flat memory: the last payload's peak within 1.25x the first's, or within 64 MB of it,
whichever allows more (a process of 100 MB may move by 64 MB without having grown with
its work; a large one by a quarter)."""


class Verdict(StrEnum):
    """How a figure compares with its goal."""

    MET = "met"
    MISSED = "MISSED"
    NOT_MEASURED = "NOT MEASURED"
    """The figure could not be measured here (a peer not installed): not met either."""


def verdict(ok: bool) -> Verdict:
    """met or MISSED."""
    return Verdict.MET if ok else Verdict.MISSED


@dataclass(frozen=True, slots=True)
class Check:
    """One goal beside the figure measured for it."""

    what: str
    figure: str
    target: str
    verdict: Verdict

    def as_doc(self) -> dict[str, Any]:
        """JSON-ready; ``ok`` only when met."""
        return {"what": self.what, "figure": self.figure, "target": self.target,
                "verdict": self.verdict.value, "ok": self.verdict is Verdict.MET}


def rss_flat(first_bytes: int, last_bytes: int) -> bool:
    """Whether the last peak stays within FLAT_RSS_FACTOR or FLAT_RSS_SLACK_BYTES of the first."""
    return last_bytes <= max(first_bytes * FLAT_RSS_FACTOR, first_bytes + FLAT_RSS_SLACK_BYTES)


def _rate(what: str, per_s: float, goal: float) -> Check:
    return Check(what, f"{per_s:,.0f} records/s", f">= {goal:,.0f} records/s",
                 verdict(per_s >= goal))


def _mb(what: str, mb: float, goal_bytes: int) -> Check:
    return Check(what, f"{mb:.0f} MB", f"< {goal_bytes // 2**20} MB", verdict(mb * 2**20 < goal_bytes))


def _throughput(figures: dict[str, Any]) -> list[Check]:
    checks = []
    copy = figures.get("copy")
    for key in ("single", "concurrent"):
        if run := figures.get(key):
            checks.append(_rate(f"end to end, {run['label']}", run["records_per_s"], GOAL_RECORDS_PER_S))
            if copy:
                share = run["records_per_s"] / copy["records_per_s"]
                checks.append(Check(f"end to end as a share of raw COPY, {run['label']}",
                                    f"{share:.1%} ({copy['records_per_s']:,.0f} rows/s COPY)",
                                    f">= {GOAL_COPY_SHARE:.0%}", verdict(share >= GOAL_COPY_SHARE)))
    return checks


def _worker_rss(single: dict[str, Any]) -> list[Check]:
    return [_mb(f"worker peak RSS, {single['label']} (sampled every 20 ms)",
                single["peak_worker_rss_mb"], GOAL_WORKER_RSS_BYTES)]


def _producers(producers: dict[str, Any]) -> list[Check]:
    return [_rate("producers on the input topic", producers["records_per_s"], GOAL_PRODUCER_RECORDS_PER_S)]


def _big(big: dict[str, Any]) -> list[Check]:
    return [
        Check("big payload, time to 202", f"{big['to_202_s']:.1f} s", f"< {GOAL_BIG_202_S:g} s",
              verdict(big["to_202_s"] < GOAL_BIG_202_S)),
        Check("big payload, time to terminal state", f"{big['total_s']:.1f} s",
              f"< {GOAL_BIG_TERMINAL_S:g} s", verdict(big["total_s"] < GOAL_BIG_TERMINAL_S)),
        _mb("big payload, peak web RSS (sampled every 20 ms)", big["peak_web_rss_mb"], GOAL_WEB_RSS_BYTES),
    ]


def _csv(csv: dict[str, Any]) -> list[Check]:
    what = f"Sluice over pgloader, the same {csv['records']:,}-row CSV"
    target = f">= {GOAL_PGLOADER_RATIO:g}x"
    if csv["pgloader"] is None:
        return [Check(what, csv["pgloader_missing"], target, Verdict.NOT_MEASURED)]
    ratio = csv["ratio"]
    return [Check(what, f"{ratio:.2f}x ({csv['sluice']['records_per_s']:,.0f} against "
                        f"{csv['pgloader']['records_per_s']:,.0f} rows/s)",
                  target, verdict(ratio >= GOAL_PGLOADER_RATIO))]


def _small_jobs(small: dict[str, Any]) -> list[Check]:
    return [
        _rate(f"small jobs, {small['label']}", small["records_per_s"], GOAL_SMALL_JOBS_RECORDS_PER_S),
        Check("small jobs, p99 from POST to terminal state", f"{small['p99_s'] * 1000:.0f} ms "
              f"(p50 {small['p50_s'] * 1000:.0f} ms)", f"< {GOAL_SMALL_JOBS_P99_S * 1000:.0f} ms",
              verdict(small["p99_s"] < GOAL_SMALL_JOBS_P99_S)),
    ]


def _dirty(dirty: dict[str, Any]) -> list[Check]:
    return [Check("dirty rate as a share of the clean rate",
                  f"{dirty['clean_ratio']:.1%} ({dirty['records_per_s']:,.0f} records/s, "
                  f"{dirty['failed']:,} failed)", f">= {GOAL_DIRTY_SHARE:.0%}",
                  verdict(dirty["clean_ratio"] >= GOAL_DIRTY_SHARE))]


def _long(long: dict[str, Any]) -> list[Check]:
    checks = []
    first, last = long["payloads"][0], long["payloads"][-1]
    for process in ("web", "worker"):
        a, b = first[f"peak_{process}_rss_mb"], last[f"peak_{process}_rss_mb"]
        checks.append(Check(
            f"{process} RSS flat over {long['records']:,} records ({len(long['payloads'])} payloads)",
            f"last payload {b:.0f} MB, first {a:.0f} MB (peak {long[f'peak_{process}_rss_mb']:.0f} MB)",
            f"<= max({FLAT_RSS_FACTOR:g}x first, first + {FLAT_RSS_SLACK_BYTES // 2**20} MB)",
            verdict(rss_flat(int(a * 2**20), int(b * 2**20)))))
    return checks


_SECTIONS: tuple[tuple[str, Callable[[dict[str, Any]], list[Check]]], ...] = (
    ("csv", _csv), ("big", _big), ("single", _worker_rss), ("small_jobs", _small_jobs),
    ("producers", _producers), ("dirty", _dirty), ("long", _long),
)
"""In the issue's order, after the end-to-end rates and their share of COPY."""


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal next to the figure measured for it, for every run the figures hold."""
    checks = _throughput(figures)
    for key, check in _SECTIONS:
        if doc := figures.get(key):
            checks += check(doc)
    return [c.as_doc() for c in checks]
