"""materialise_job_progress: keeps each job's latest counts in the job_to_progress table.

Results messages can arrive twice (a redelivered batch is published again) and out of
order across batches; a snapshot only replaces a smaller one. Reports are not sent from
here: the transaction that ends a job queues its report in the outbox, and
``agents.publish_reports`` sends it, so that a crash between the two cannot lose it.
"""

from __future__ import annotations

import faust

from agents.progress import merge_progress, snapshot_of
from agents.topics import results_topic
from app import metrics
from app.faust_app import app
from tables.job_progress import job_to_progress


@app.agent(results_topic)
async def materialise_job_progress(results: faust.StreamT[bytes]) -> None:
    """Track each job's progress from the results topic."""
    async for event in results.events():
        with metrics.timed_stage("progress"):
            snapshot = snapshot_of(event.message.headers, event.value or b"")
            if not snapshot:
                continue
            job_id = snapshot["job_id"]
            job_to_progress[job_id] = merge_progress(job_to_progress[job_id], snapshot)
