"""Pure helpers of the report agent: merging job snapshots and shaping job reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from agents.batching import JOB_HEADER
from schemas.vocabulary import TERMINAL_STATES


def processed(progress: dict[str, Any]) -> int:
    """Records of a job with an outcome: progress only ever grows."""
    return int(progress.get("succeeded", 0) + progress.get("failed", 0)
               + progress.get("duplicates", 0) + progress.get("aborted", 0))


def next_progress(
    current: dict[str, Any], snapshot: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Merge a job snapshot into stored progress; True if a report is now due."""
    reported = bool(current.get("reported"))
    if current and processed(snapshot) < processed(current):
        return current, False
    merged = {**snapshot, "reported": reported}
    due = snapshot.get("state") in TERMINAL_STATES and not reported
    if due:
        merged["reported"] = True
    return merged, due


def snapshot_of(headers: Iterable[tuple[str, bytes | None]] | None, value: bytes) -> Any:
    """A results message's job snapshot: from its header, else (older messages) its body."""
    for key, header in headers or ():
        if key == JOB_HEADER and header is not None:
            return orjson.loads(header)
    return orjson.loads(value).get("job")


def job_report(snapshot: dict[str, Any]) -> bytes:
    """The job report as published on the job-reports topic."""
    return orjson.dumps(
        {k: snapshot.get(k) for k in (
            "job_id", "target", "operation", "source", "state", "records_received",
            "succeeded", "failed", "duplicates", "created_at", "accepted_at", "completed_at",
            "tenant",
        )}
    )


def audit_fields(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The audit line of a finished job: who, which tenant, what, and how it ended."""
    return {
        "audit": True, "subject": snapshot.get("principal"), "tenant": snapshot.get("tenant"),
        "target": snapshot.get("target"), "operation": snapshot.get("operation"),
        "job_id": snapshot.get("job_id"), "state": snapshot.get("state"),
        "records": snapshot.get("records_received"),
        "counts": {k: snapshot.get(k) for k in ("succeeded", "failed", "duplicates", "aborted")},
    }
