"""materialise_job_reports: keeps per-job progress and publishes one report per finished job.

Results messages can arrive twice (a redelivered batch is published again) and out of
order across batches; a snapshot only replaces a smaller one, and a job's report is
published once, when a terminal snapshot is first seen.
"""

from __future__ import annotations

import logging

import faust

from agents.apply_records import results_topic
from agents.progress import audit_fields, job_report, next_progress, snapshot_of
from app import metrics
from app.faust_app import app, topics
from app.settings import get_settings
from tables.job_progress import job_to_progress

audit_log = logging.getLogger("sluice.audit")

job_reports_topic = app.topic(
    topics.job_reports, key_serializer="raw", value_serializer="raw",
    partitions=get_settings().partitions,
)


@app.agent(results_topic)
async def materialise_job_reports(results: faust.StreamT[bytes]) -> None:
    """Track each job's progress; publish its report once it is terminal."""
    async for event in results.events():
        with metrics.timed_stage("report"):
            snapshot = snapshot_of(event.message.headers, event.value or b"")
            if not snapshot:
                continue
            job_id = snapshot["job_id"]
            merged, due = next_progress(job_to_progress[job_id], snapshot)
            job_to_progress[job_id] = merged
            if due:
                await job_reports_topic.send(key=job_id.encode(), value=job_report(snapshot))
                audit_log.info("bulk operation finished", extra=audit_fields(snapshot))
