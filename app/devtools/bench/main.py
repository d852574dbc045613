"""Runs every benchmark scenario in order and prints the figures."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from dataclasses import asdict
from typing import Any

import orjson

from app.devtools.bench import scenarios
from app.devtools.bench.processes import BenchServices, Pipeline
from app.devtools.bench.report import render
from app.devtools.bench.scenarios import RunFigures
from app.devtools.bench.workload import ndjson, ndjson_of_size
from app.settings import get_settings

# The goals the figures are held against (issue: throughput on 2 cores).
GOAL_RECORDS_PER_S = 25_000
GOAL_BIG_202_S = 30.0
GOAL_BIG_TERMINAL_S = 300.0
GOAL_WEB_RSS_BYTES = 300 * 1024 * 1024
GOAL_WORKER_RSS_BYTES = 500 * 1024 * 1024
"""Worker memory must not grow with what it has written (issue: correct writes)."""
GOAL_DIRTY_SHARE = 0.80
"""Dirty data (issue: correct writes) must cost about what the bad rows cost, not the batch."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sluice bench`."""
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="records in the single-payload run (and the COPY baseline)")
    parser.add_argument("--payloads", type=int, default=20,
                        help="concurrent payloads sharing --records in the concurrent run")
    parser.add_argument("--big-mb", type=float, default=100.0,
                        help="size of the big-payload run in MB (0 skips it)")
    parser.add_argument("--producer-records", type=int, default=100_000,
                        help="records written straight to the input topic (0 skips it)")
    parser.add_argument("--dirty", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the single payload dirty: 1 %% invalid, 1 %% existing keys "
                             "with other values, 0.1 %% CHECK violations")
    parser.add_argument("--sweep", default="500,1000,2000",
                        help="batch sizes to compare, comma-separated (empty skips the sweep)")
    parser.add_argument("--sweep-records", type=int, default=200_000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _machine() -> str:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (f"{os.cpu_count()} cores, {pages / 2**30:.0f} GiB; broker, PostgreSQL, Valkey, "
            "worker and web all on this machine")


def _run_doc(label: str, run: RunFigures) -> dict[str, Any]:
    return {
        "label": label, "records": run.records, "payload_mb": run.payload_bytes / 1e6,
        "to_202_s": run.to_202_s, "total_s": run.total_s, "records_per_s": run.records_per_s,
        "states": sorted(set(run.states)), "peak_web_rss_mb": (
            run.peak_web_rss_bytes / 2**20 if run.peak_web_rss_bytes is not None else None),
        "peak_worker_rss_mb": run.peak_worker_rss_bytes / 2**20,
        "stages": [{**asdict(s), "records_per_s": s.records_per_s} for s in run.stages],
    }


async def _sweep(services: BenchServices, sizes: list[int], records: int, tag: str,
                 say: Any) -> dict[str, Any]:
    runs = []
    for size in sizes:
        pipeline = services.pipeline(f"batch{size}", batch_size=str(size))
        try:
            await scenarios.warm_up(pipeline, f"{tag}-w{size}")
            say(f"batch size {size}: {records:,} records")
            run = await scenarios.http_run(pipeline, [(ndjson(f"{tag}-s{size}", 0, records), records)])
        finally:
            pipeline.stop()
        runs.append({"batch_size": size, "total_s": run.total_s, "records_per_s": run.records_per_s})
    fastest = max(runs, key=lambda r: r["records_per_s"])["batch_size"]
    return {"records": records, "runs": runs, "fastest": fastest,
            "default": get_settings().batch_size}


async def _main_runs(services: BenchServices, pipeline: Pipeline, args: argparse.Namespace,
                     tag: str, say: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    n = args.records
    say(f"one payload of {n:,} records")
    single = await scenarios.http_run(pipeline, [(ndjson(f"{tag}-one", 0, n), n)])
    figures["single"] = _run_doc(f"1 x {n:,} NDJSON", single)
    if args.dirty:
        say(f"the same size dirty: {n:,} records, 2.1 % of them bad")
        dirty = await scenarios.dirty_run(pipeline, services.dsn, f"{tag}-dirty", n)
        figures["dirty"] = {**_run_doc(f"1 x {n:,} NDJSON, dirty", dirty),
                            "failed": dirty.failed,
                            "clean_ratio": dirty.records_per_s / single.records_per_s}
    if args.payloads > 1:
        each = n // args.payloads
        say(f"{args.payloads} concurrent payloads of {each:,} records")
        bodies = [(ndjson(f"{tag}-c{k}", 0, each), each) for k in range(args.payloads)]
        concurrent = await scenarios.http_run(pipeline, bodies)
        del bodies
        figures["concurrent"] = _run_doc(f"{args.payloads} x {each:,} concurrently", concurrent)
    if args.big_mb > 0:
        body, count = ndjson_of_size(f"{tag}-big", int(args.big_mb * 1e6))
        say(f"one {len(body) / 1e6:.0f} MB payload ({count:,} records)")
        big = await scenarios.http_run(pipeline, [(body, count)], watch_web_rss=True)
        del body
        figures["big"] = _run_doc(f"{args.big_mb:g} MB payload", big)
    if args.producer_records > 0:
        say(f"{args.producer_records:,} records straight to the input topic")
        produced = await scenarios.producer_run(pipeline, services.kafka, services.dsn,
                                                f"{tag}-p", args.producer_records)
        figures["producers"] = {"label": "producers -> input topic", **asdict(produced),
                                "records_per_s": produced.records_per_s}
    say(f"raw COPY of {n:,} rows")
    copy_s = await scenarios.copy_baseline(services.dsn, f"{tag}-copy", n)
    figures["copy"] = {"label": f"raw COPY of {n:,} rows", "records": n, "seconds": copy_s,
                       "records_per_s": n / copy_s,
                       "end_to_end_ratio": single.records_per_s / (n / copy_s)}
    return figures


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal next to the figure measured for it."""
    checks = []
    if single := figures.get("single"):
        checks.append({"what": f"end to end, {single['label']}",
                       "figure": f"{single['records_per_s']:,.0f} records/s",
                       "target": f">= {GOAL_RECORDS_PER_S:,} records/s",
                       "ok": single["records_per_s"] >= GOAL_RECORDS_PER_S})
        checks.append({"what": f"worker peak RSS, {single['label']} (sampled every 20 ms)",
                       "figure": f"{single['peak_worker_rss_mb']:.0f} MB",
                       "target": f"< {GOAL_WORKER_RSS_BYTES // 2**20} MB",
                       "ok": single["peak_worker_rss_mb"] * 2**20 < GOAL_WORKER_RSS_BYTES})
    if big := figures.get("big"):
        checks += [
            {"what": "big payload, time to 202", "figure": f"{big['to_202_s']:.1f} s",
             "target": f"< {GOAL_BIG_202_S:g} s", "ok": big["to_202_s"] < GOAL_BIG_202_S},
            {"what": "big payload, time to terminal state", "figure": f"{big['total_s']:.1f} s",
             "target": f"< {GOAL_BIG_TERMINAL_S:g} s", "ok": big["total_s"] < GOAL_BIG_TERMINAL_S},
            {"what": "big payload, peak web RSS (sampled every 20 ms)",
             "figure": f"{big['peak_web_rss_mb']:.0f} MB",
             "target": f"< {GOAL_WEB_RSS_BYTES // 2**20} MB",
             "ok": big["peak_web_rss_mb"] * 2**20 < GOAL_WEB_RSS_BYTES},
        ]
    if dirty := figures.get("dirty"):
        checks.append({"what": "dirty rate as a share of the clean rate",
                       "figure": f"{dirty['clean_ratio']:.1%} ({dirty['records_per_s']:,.0f} records/s, "
                                 f"{dirty['failed']:,} failed)",
                       "target": f">= {GOAL_DIRTY_SHARE:.0%}",
                       "ok": dirty["clean_ratio"] >= GOAL_DIRTY_SHARE})
    if copy := figures.get("copy"):
        checks.append({"what": "end to end as a share of raw COPY",
                       "figure": f"{copy['end_to_end_ratio']:.1%}", "target": "ceiling 100%",
                       "ok": True})
    return checks


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start services, run the sweep and the main scenarios, stop everything."""
    say = scenarios.progress(lambda m: print(m, file=sys.stderr, flush=True))
    sizes = [int(s) for s in args.sweep.split(",") if s.strip()]
    tag = f"bench-{uuid.uuid4().hex[:6]}"
    services = BenchServices(get_settings())
    say("starting services")
    services.start()
    try:
        figures: dict[str, Any] = {"machine": _machine()}
        if sizes:
            figures["batch_sweep"] = await _sweep(services, sizes, args.sweep_records, tag, say)
        say("starting worker and web with the default settings")
        pipeline = services.pipeline("main")
        await scenarios.warm_up(pipeline, f"{tag}-warm")
        figures.update(await _main_runs(services, pipeline, args, tag, say))
        figures["targets"] = targets(figures)
        return figures
    finally:
        services.stop()


def main(args: argparse.Namespace) -> int:
    """`sluice bench`: print the figures as tables, or JSON with --json."""
    figures = asyncio.run(run(args))
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else render(figures))
    return 0
