"""publish_job_reports: sends the reports waiting in the outbox to the job-reports topic.

A report is marked sent only after the broker acknowledged it, so a worker that dies in
between sends it again after its restart (or another worker does): at least once,
keyed by job id, never lost. The audit line of a finished job is written here too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import faust

from agents.resources import resources
from agents.topics import job_reports_topic
from app import metrics
from app.faust_app import app
from app.settings import get_settings
from app.store import reports
from schemas.job_report import audit_fields, job_report

log = logging.getLogger(__name__)
audit_log = logging.getLogger("sluice.audit")

BATCH = 200


class ReportPublisher(faust.Service):
    """Publishes outbox reports until none is left, then waits ``report_poll_s``."""

    @faust.Service.task
    async def _publish(self) -> None:
        await resources.wait_ready()
        while not self.should_stop:
            try:
                sent = await publish_pending(resources.pool)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                if self.should_stop:  # the pool closed under a worker shutting down
                    return
                log.warning("job reports not published (%s); retrying", type(e).__name__)
                sent = 0
            if sent < BATCH:
                await asyncio.sleep(get_settings().report_poll_s)


async def publish_pending(pool: asyncpg.Pool) -> int:
    """Send up to BATCH unsent reports, wait for the broker, mark them sent; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        snapshots = await reports.claim_unsent(conn, BATCH)
        if not snapshots:
            return 0
        with metrics.timed_stage("report"):
            pending: list[Any] = [
                await job_reports_topic.send(key=s["job_id"].encode(), value=job_report(s))
                for s in snapshots
            ]
            await asyncio.gather(*pending)
        await reports.mark_sent(conn, [s["job_id"] for s in snapshots])
    for snapshot in snapshots:
        audit_log.info("bulk operation finished", extra=audit_fields(snapshot))
    return len(snapshots)


publisher = ReportPublisher()
app.service(publisher)  # type: ignore[arg-type]  # faust accepts instances too
