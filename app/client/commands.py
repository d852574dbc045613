"""`sluice submit | jobs | results | watch`: the API for people at a terminal.

Exit statuses say how a followed job ended (``ExitStatus``), so that a script can tell a
job with failed records from one that completed and from a request that was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson
from rich.console import Console

from app.client.api import ApiError, ClientSettings, SluiceClient
from app.client.display import (
    jobs_table,
    processing_bar,
    rate_text,
    settled,
    summary_table,
    upload_bar,
)
from app.client.upload import FORMATS, Compression, body_of, plan_upload
from app.errors import SluiceError
from schemas.vocabulary import TERMINAL_STATES, JobState, Operation, RecordStatus

POLL_S = 0.5
"""How often a followed job is asked for its counts."""


class ExitStatus(enum.IntEnum):
    """What a client command's exit status says."""

    OK = 0
    """Done: the job completed (or, without --watch, was accepted)."""
    ERROR = 1
    """The service refused a request or could not be reached."""
    COMPLETED_WITH_ERRORS = 3
    """The job completed, and some of its records failed."""
    FAILED = 4
    """The job failed or was aborted."""


def exit_status(state: str) -> ExitStatus:
    if state == JobState.COMPLETED:
        return ExitStatus.OK
    if state == JobState.COMPLETED_WITH_ERRORS:
        return ExitStatus.COMPLETED_WITH_ERRORS
    return ExitStatus.FAILED


CLIENT_COMMANDS = ("submit", "jobs", "results", "watch")


def add_client_commands(sub: Any) -> None:
    """The client commands, on the `sluice` parser's subcommands."""

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--url", help="the API (default: SLUICE_URL, or http://127.0.0.1:8080)")
        parser.add_argument("--token", help="a bearer token (default: SLUICE_TOKEN)")
        parser.add_argument("--ca-file", type=Path, help="CA bundle for the API's TLS certificate")
        return parser

    submit = common(sub.add_parser("submit", help="send a file as one bulk operation"))
    submit.add_argument("file", type=Path)
    submit.add_argument("--target", required=True)
    submit.add_argument("--operation", default=Operation.INSERT.value,
                        choices=[op.value for op in Operation])
    submit.add_argument("--format", choices=sorted(FORMATS),
                        help="default: from the file name (.ndjson/.jsonl, .json, .csv, .pb, .avro; "
                             ".gz after it)")
    submit.add_argument("--compress", choices=[c.value for c in Compression],
                        default=Compression.NONE.value, help="compress the body while sending it")
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")
    submit.add_argument("--failures", type=Path,
                        help="where --watch writes the failed records' result lines "
                             "(default: JOB_ID.failures.ndjson, only if some failed)")
    submit.add_argument("--retry-failed", metavar="JOB",
                        help="this file resends JOB's failed records, corrected: the new job "
                             "is linked to it (its retry_of)")
    submit.add_argument("--idempotency-key", help="send again safely: the same key replays the 202")

    jobs = common(sub.add_parser("jobs", help="list recent jobs"))
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--state", choices=[s.value for s in JobState if s is not JobState.RECEIVING])
    jobs.add_argument("--target")

    results = common(sub.add_parser("results", help="stream a job's per-record results (NDJSON)"))
    results.add_argument("job")
    results.add_argument("--status", default="all", choices=["all", *RecordStatus])
    results.add_argument("--records", action="store_true",
                         help="print only the records as received (failed results carry them): "
                              "a file to correct and submit again with --retry-failed")

    watch = common(sub.add_parser("watch", help="follow a job until it ends"))
    watch.add_argument("job")
    watch.add_argument("--failures", type=Path, help="where to write failed result lines")


def _settings(args: argparse.Namespace) -> ClientSettings:
    given = {name: value for name, value in (("url", args.url), ("token", args.token),
                                             ("ca_file", args.ca_file)) if value}
    return ClientSettings(**given)


async def _write_failures(client: SluiceClient, job_id: str, path: Path) -> Counter[str]:
    """Stream the job's failed result lines into ``path``; their count by code."""
    by_code: Counter[str] = Counter()
    with path.open("wb") as out:
        async for line in client.results(job_id, RecordStatus.FAILED):
            by_code[str(line.get("code"))] += 1
            out.write(orjson.dumps(line) + b"\n")
    return by_code


async def follow(client: SluiceClient, job_id: str, console: Console,
                 failures: Path | None) -> ExitStatus:
    """Show the job's progress until it ends, then its summary; write its failures."""
    rates: list[tuple[float, int]] = []
    with processing_bar(console) as bar:
        task = bar.add_task("processing", total=None, rate="")
        while True:
            job = await client.job(job_id)
            done, now = settled(job["counts"]), time.monotonic()
            rates = [*rates[-20:], (now, done)]
            span = rates[-1][0] - rates[0][0]
            per_s = (rates[-1][1] - rates[0][1]) / span if span > 0 else None
            bar.update(task, total=job["counts"]["received"] or None, completed=done,
                       description=job["state"], rate=rate_text(per_s))
            if job["state"] in TERMINAL_STATES:
                break
            await asyncio.sleep(POLL_S)
    by_code: Counter[str] = Counter()
    path = failures or Path(f"{job_id}.failures.ndjson")
    if job["counts"]["failed"]:
        by_code = await _write_failures(client, job_id, path)
    console.print(summary_table(job, by_code))
    if by_code:
        console.print(f"failed records' results written to [bold]{path}[/]: "
                      f"`sluice results {job_id} --status failed --records` gives the records alone")
    return exit_status(job["state"])


async def _submit(args: argparse.Namespace, console: Console) -> ExitStatus:
    upload = plan_upload(args.file, args.format, Compression(args.compress))
    async with SluiceClient(_settings(args)) as client:
        with upload_bar(console) as bar:
            task = bar.add_task(f"upload {upload.path.name}", total=upload.size)

            def sent(count: int) -> None:
                bar.advance(task, count)
                if bar.tasks[0].finished:
                    bar.update(task, description="sent; waiting until every record is in Kafka")

            accepted = await client.submit(
                body_of(upload, sent), target=args.target, operation=args.operation,
                content_type=upload.content_type, content_encoding=upload.content_encoding,
                retry_of=args.retry_failed, idempotency_key=args.idempotency_key)
        console.print(f"job [bold]{accepted['job_id']}[/] accepted: "
                      f"{accepted['records_received']:,} records")
        if not args.watch:
            return ExitStatus.OK
        return await follow(client, accepted["job_id"], console, args.failures)


async def _jobs(args: argparse.Namespace, console: Console) -> ExitStatus:
    async with SluiceClient(_settings(args)) as client:
        found = await client.jobs(limit=args.limit, state=args.state, target=args.target)
    console.print(jobs_table(found))
    return ExitStatus.OK


async def _results(args: argparse.Namespace, out: TextIO) -> ExitStatus:
    """Result lines to ``out`` as they arrive; with --records, the records alone."""
    without_record = 0
    async with SluiceClient(_settings(args)) as client:
        async for line in client.results(args.job, args.status):
            if not args.records:
                out.write(orjson.dumps(line).decode() + "\n")
            elif "record" in line:
                out.write(line["record"].rstrip("\r\n") + "\n")
            else:
                without_record += 1
    if without_record:
        print(f"{without_record} result lines carry no record (only failed results do)",
              file=sys.stderr)
    return ExitStatus.OK


async def _watch(args: argparse.Namespace, console: Console) -> ExitStatus:
    async with SluiceClient(_settings(args)) as client:
        return await follow(client, args.job, console, args.failures)


def run_client_command(args: argparse.Namespace) -> int:
    """Run one client command; a refused request or a bad file is one line on stderr."""
    console = Console(stderr=args.command == "results")
    commands = {"submit": lambda: _submit(args, console), "jobs": lambda: _jobs(args, console),
                "results": lambda: _results(args, sys.stdout),
                "watch": lambda: _watch(args, console)}
    try:
        return int(asyncio.run(commands[args.command]()))
    except ApiError as e:
        console.print(f"[red]sluice {args.command}: {e}")
        return ExitStatus.ERROR
    except (SluiceError, OSError, aiohttp.ClientError) as e:
        console.print(f"[red]sluice {args.command}: {e}")
        return ExitStatus.ERROR
