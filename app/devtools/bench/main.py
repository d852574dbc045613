"""Runs every benchmark scenario in order and prints the figures."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from app.devtools.bench import scenarios
from app.devtools.bench.csv_peer import INSTALL_HINT, csv_run, find_pgloader
from app.devtools.bench.formats import FORMATS, formats_run
from app.devtools.bench.goals import targets
from app.devtools.bench.long_run import LONG_PAYLOAD_RECORDS, long_run
from app.devtools.bench.on_kafka import kafka_runs
from app.devtools.bench.processes import BenchServices, Pipeline
from app.devtools.bench.report import render
from app.devtools.bench.small_jobs import small_jobs_run
from app.devtools.bench.watchers import watched_run
from app.devtools.bench.workload import ndjson, ndjson_of_size
from app.settings import get_settings

Say = Callable[[str], None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sluice bench`."""
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="records in the single-payload run, the CSV runs (Sluice and "
                             "pgloader) and the COPY baseline")
    parser.add_argument("--payloads", type=int, default=20,
                        help="concurrent payloads sharing --records in the concurrent run")
    parser.add_argument("--big-mb", type=float, default=100.0,
                        help="size of the big-payload run in MB (0 skips it)")
    parser.add_argument("--producer-records", type=int, default=500_000,
                        help="records written straight to the input topic (0 skips it)")
    parser.add_argument("--dirty", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the single payload dirty: 1 %% invalid, 1 %% existing keys "
                             "with other values, 0.1 %% CHECK violations")
    parser.add_argument("--csv", action=argparse.BooleanOptionalAction, default=True,
                        help="load --records rows as one CSV file with pgloader and with Sluice")
    parser.add_argument("--pgloader", default="pgloader",
                        help="the pgloader command (absent: that comparison is not measured)")
    parser.add_argument("--format-records", type=int, default=200_000,
                        help="records sent once in each body format (NDJSON, JSON, CSV, Protobuf, "
                             "Avro), fresh keys each time, to compare them (0 skips it)")
    parser.add_argument("--watchers", type=int, default=200,
                        help="live event streams (SSE, the tenant's jobs) open during a second "
                             "single-payload run, to show what they cost (0 skips it)")
    parser.add_argument("--small-jobs", type=int, default=1000,
                        help="small jobs, each polled to its end before the client sends the next "
                             "(0 skips them)")
    parser.add_argument("--small-job-records", type=int, default=200)
    parser.add_argument("--small-clients", type=int, default=40,
                        help="concurrent clients sending the small jobs")
    parser.add_argument("--long-records", type=int, default=0,
                        help="records of the long run, as consecutive payloads, watching both "
                             "processes' memory (0 skips it; the issue asks for 10,000,000)")
    parser.add_argument("--long-payload-records", type=int, default=LONG_PAYLOAD_RECORDS)
    parser.add_argument("--sweep", default="500,1000,2000",
                        help="batch sizes to compare, comma-separated (empty skips the sweep)")
    parser.add_argument("--sweep-records", type=int, default=200_000)
    parser.add_argument("--kafka", action=argparse.BooleanOptionalAction, default=True,
                        help="also run on Apache Kafka (needs a JDK and Maven): one payload, "
                             "the concurrent payloads, the producer path and the Kafka Connect peer")
    parser.add_argument("--kafka-nodes", type=int, default=3,
                        help="Apache Kafka nodes (3: replication factor 3, min.insync.replicas 2)")
    parser.add_argument("--peer-records", type=int, default=1_000_000,
                        help="records on Kafka for Sluice's producer path and for Kafka Connect "
                             "with the Debezium JDBC sink (0 skips both)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _machine() -> str:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (f"{os.cpu_count()} cores, {pages / 2**30:.0f} GiB; broker, PostgreSQL, Valkey, "
            "worker and web all on this machine")


async def _sweep(services: BenchServices, sizes: list[int], records: int, tag: str,
                 say: Say) -> dict[str, Any]:
    runs = []
    for size in sizes:
        pipeline = services.pipeline(f"batch{size}", batch_size=str(size))
        try:
            await scenarios.warm_up(pipeline, f"{tag}-w{size}", services.settings.partitions)
            say(f"batch size {size}: {records:,} records")
            run = await scenarios.http_run(pipeline, [(ndjson(f"{tag}-s{size}", 0, records), records)])
        finally:
            pipeline.stop()
        runs.append({"batch_size": size, "total_s": run.total_s, "records_per_s": run.records_per_s})
    fastest = max(runs, key=lambda r: r["records_per_s"])["batch_size"]
    return {"records": records, "runs": runs, "fastest": fastest,
            "default": get_settings().batch_size}


async def _payload_runs(services: BenchServices, pipeline: Pipeline, args: argparse.Namespace,
                        tag: str, say: Say) -> dict[str, Any]:
    """One big NDJSON payload, the same dirty, many concurrent, and a very big one."""
    figures: dict[str, Any] = {}
    n = args.records
    say(f"one payload of {n:,} records")
    single = await scenarios.http_run(pipeline, [(ndjson(f"{tag}-one", 0, n), n)])
    figures["single"] = single.as_doc(f"1 x {n:,} NDJSON")
    if args.watchers > 0:
        say(f"the same size again, {args.watchers} live event streams open on the web process")
        watched = await watched_run(pipeline, f"{tag}-watched", n, args.watchers)
        figures["watched"] = {**watched,
                              "single_ratio": watched["records_per_s"] / single.records_per_s}
    if args.dirty:
        say(f"the same size dirty: {n:,} records, 2.1 % of them bad")
        dirty = await scenarios.dirty_run(pipeline, services.dsn, f"{tag}-dirty", n)
        figures["dirty"] = {**dirty.as_doc(f"1 x {n:,} NDJSON, dirty"), "failed": dirty.failed,
                            "clean_ratio": dirty.records_per_s / single.records_per_s}
    if args.payloads > 1:
        each = n // args.payloads
        say(f"{args.payloads} concurrent payloads of {each:,} records")
        bodies = [(ndjson(f"{tag}-c{k}", 0, each), each) for k in range(args.payloads)]
        concurrent = await scenarios.http_run(pipeline, bodies)
        del bodies
        figures["concurrent"] = concurrent.as_doc(f"{args.payloads} x {each:,} concurrently")
    if args.big_mb > 0:
        body, count = ndjson_of_size(f"{tag}-big", int(args.big_mb * 1e6))
        say(f"one {args.big_mb:g} MB payload ({count:,} records)")
        big = await scenarios.http_run(pipeline, [(body, count)], watch_web_rss=True)
        del body
        figures["big"] = big.as_doc(f"{args.big_mb:g} MB payload")
    return figures


async def _other_runs(services: BenchServices, pipeline: Pipeline, args: argparse.Namespace,
                      tag: str, say: Say) -> dict[str, Any]:
    """CSV beside pgloader, many small jobs, producers, the COPY baseline, the long run."""
    figures: dict[str, Any] = {}
    n = args.records
    if args.csv:
        pgloader = find_pgloader(args.pgloader)
        if pgloader is None:
            say(f"pgloader is not installed ({args.pgloader!r} not found): the comparison with it "
                f"is not measured; install it with `{INSTALL_HINT}`")
        say(f"the same {n:,} rows as one CSV file: " + ("pgloader, then " if pgloader else "") + "Sluice")
        csv = await csv_run(pipeline, services.dsn, f"{tag}-csv", n, services.data, pgloader)
        figures["csv"] = csv.as_doc()
    if args.format_records > 0:
        say(f"{args.format_records:,} records in each of {len(FORMATS)} body formats")
        figures["formats"] = await formats_run(pipeline, f"{tag}-fmt", args.format_records, say)
    if args.small_jobs > 0:
        say(f"{args.small_jobs:,} small jobs of {args.small_job_records:,} records from "
            f"{args.small_clients} clients, each polling its job to the end")
        small = await small_jobs_run(pipeline, f"{tag}-j", args.small_jobs, args.small_job_records,
                                     args.small_clients)
        figures["small_jobs"] = small.as_doc()
        say("the same, each client asking to be answered at the job's end (Prefer: wait)")
        inline = await small_jobs_run(pipeline, f"{tag}-w", args.small_jobs,
                                      args.small_job_records, args.small_clients, inline=True)
        figures["small_jobs_inline"] = inline.as_doc()
    if args.producer_records > 0:
        say(f"{args.producer_records:,} records straight to the input topic")
        produced = await scenarios.producer_run(pipeline, services.kafka, services.dsn,
                                                f"{tag}-p", args.producer_records)
        figures["producers"] = produced.as_doc()
    say(f"raw COPY of {n:,} rows")
    copy_s = await scenarios.copy_baseline(services.dsn, f"{tag}-copy", n)
    figures["copy"] = {"label": f"raw COPY of {n:,} rows", "records": n, "seconds": copy_s,
                       "records_per_s": n / copy_s}
    if args.long_records > 0:
        say(f"long run: {args.long_records:,} records as payloads of {args.long_payload_records:,}")
        long = await long_run(pipeline, f"{tag}-long", args.long_records, args.long_payload_records, say)
        figures["long"] = long.as_doc()
    return figures


def _copy_shares(figures: dict[str, Any]) -> None:
    """End to end over raw COPY, for the single and the concurrent run (in the copy figure)."""
    copy = figures["copy"]
    for key in ("single", "concurrent"):
        if run := figures.get(key):
            copy[f"{key}_ratio"] = run["records_per_s"] / copy["records_per_s"]
    copy["end_to_end_ratio"] = copy.get("single_ratio")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start services, run the sweep and the main scenarios, stop everything; then the
    runs on Apache Kafka on services of their own."""
    say = scenarios.progress(lambda m: print(m, file=sys.stderr, flush=True))
    sizes = [int(s) for s in args.sweep.split(",") if s.strip()]
    tag = f"bench-{uuid.uuid4().hex[:6]}"
    services = BenchServices(get_settings())
    say("starting services")
    services.start()
    figures: dict[str, Any] = {"machine": _machine()}
    try:
        if sizes:
            figures["batch_sweep"] = await _sweep(services, sizes, args.sweep_records, tag, say)
        say("starting worker and web with the default settings (rate limits raised for the bench)")
        pipeline = services.pipeline("main")
        await scenarios.warm_up(pipeline, f"{tag}-warm", services.settings.partitions)
        figures.update(await _payload_runs(services, pipeline, args, tag, say))
        figures.update(await _other_runs(services, pipeline, args, tag, say))
        _copy_shares(figures)
        figures["targets"] = targets(figures)
    finally:
        services.stop()
    if args.kafka:
        figures["kafka"] = await kafka_runs(args, tag, say)
    return figures


def main(args: argparse.Namespace) -> int:
    """`sluice bench`: print the figures as tables, or JSON with --json."""
    figures = asyncio.run(run(args))
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() if args.json else render(figures))
    return 0
