"""What the client commands show a person: live bars while a file uploads and while its
job runs, a summary table at the end, a table of recent jobs. Rich draws them on a
terminal and prints plain lines elsewhere (a pipe, a CI log)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

COUNTED = ("succeeded", "failed", "duplicates", "aborted")


def settled(counts: Mapping[str, int]) -> int:
    """Records of a job with an outcome, whatever it is."""
    return sum(counts[name] for name in COUNTED)


def upload_bar(console: Console) -> Progress:
    """Bytes of the file sent, their rate and what is left."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                    DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                    console=console)


def processing_bar(console: Console) -> Progress:
    """Records with an outcome out of those received, and their rate."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                    MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    console=console)


def rate_text(records_per_s: float | None) -> str:
    return f"{records_per_s:,.0f} records/s" if records_per_s else ""


def summary_table(job: Mapping[str, Any], failures_by_code: Counter[str]) -> Table:
    """The job's outcome: its state, each count, and its failures by code."""
    counts = job["counts"]
    table = Table(title=str(job["state"]), title_justify="left")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("job", str(job["job_id"]))
    table.add_row("received", f"{counts['received']:,}")
    table.add_row("[green]succeeded", f"{counts['succeeded']:,}")
    table.add_row("[yellow]duplicates", f"{counts['duplicates']:,}")
    table.add_row("[red]failed", f"{counts['failed']:,}")
    for code, count in failures_by_code.most_common():
        table.add_row(f"  [red]{code}", f"{count:,}")
    if counts["aborted"]:
        table.add_row("[magenta]aborted", f"{counts['aborted']:,}")
    if job.get("reason"):
        table.caption = f"reason: {job['reason']}"
    return table


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    """Recent jobs, newest first."""
    table = Table(title="jobs, newest first", title_justify="left")
    # A job id is copied from here into the next command: never cut or wrapped.
    table.add_column("job", no_wrap=True, min_width=36)
    table.add_column("state", no_wrap=True)
    for name in ("target", "operation"):
        table.add_column(name)
    for name in ("received", "succeeded", "failed"):
        table.add_column(name, justify="right")
    table.add_column("created", no_wrap=True)
    for job in jobs:
        counts = job["counts"]
        table.add_row(job["job_id"], job["state"], job["target"], job["operation"],
                      f"{counts['received']:,}", f"{counts['succeeded']:,}",
                      f"{counts['failed']:,}", job["created_at"][:19].replace("T", " "))
    return table
