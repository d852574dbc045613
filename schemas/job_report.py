"""A finished job as it is reported: the job-reports topic's message and the audit line."""

from __future__ import annotations

from typing import Any

import orjson

REPORT_FIELDS = (
    "job_id", "target", "operation", "source", "state", "records_received",
    "succeeded", "failed", "duplicates", "aborted", "reason", "created_at", "accepted_at",
    "completed_at", "tenant",
)


def job_report(snapshot: dict[str, Any]) -> bytes:
    """The job report as published on the job-reports topic."""
    return orjson.dumps({k: snapshot.get(k) for k in REPORT_FIELDS}, default=str)


def audit_fields(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The audit line of a finished job: who, which tenant, what, and how it ended."""
    return {
        "audit": True, "subject": snapshot.get("principal"), "tenant": snapshot.get("tenant"),
        "target": snapshot.get("target"), "operation": snapshot.get("operation"),
        "job_id": snapshot.get("job_id"), "state": snapshot.get("state"),
        "records": snapshot.get("records_received"),
        "counts": {k: snapshot.get(k) for k in ("succeeded", "failed", "duplicates", "aborted")},
    }
