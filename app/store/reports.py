"""The job-report outbox: a job's report is committed with the transition that ends the job.

Publishing a report after the commit that completes a job, in a second step, loses it
when the process dies in between. So every transition into a terminal state (the
sink's last count, an abort, a failed submission) writes the job's snapshot here in the
same transaction, and the worker's report publisher sends what is unsent and marks it
sent only after the broker acknowledged it: at least once, keyed by job id. The same
statement queues the job's webhook deliveries (app/store/webhooks.py), one per endpoint
of its tenant, so that no job ends without them either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import orjson

from app.store import webhooks
from schemas.vocabulary import TERMINAL_STATES

DDL = """
CREATE TABLE IF NOT EXISTS sluice_report_outbox (
    job_id     text PRIMARY KEY,
    snapshot   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX IF NOT EXISTS sluice_report_outbox_unsent
    ON sluice_report_outbox (created_at) WHERE sent_at IS NULL;
"""

JOB_ENDED_CHANNEL = "sluice_job_ended"
"""Notified (payload: the job id), at the commit, when a job's report is queued: the job
has just ended. A web process answering ``Prefer: wait`` listens (web/job_endings.py)."""

_ENQUEUE = f"""
WITH queued AS (
    INSERT INTO sluice_report_outbox (job_id, snapshot)
    SELECT j.job_id, to_jsonb(j) FROM sluice_jobs j
    WHERE j.job_id = ANY($1::text[]) AND j.state = ANY($2::text[])
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id, snapshot
), deliveries AS ({webhooks.QUEUE_JOB_ENDED})
SELECT count(pg_notify($3, job_id)) FROM queued
"""
_TERMINAL = sorted(TERMINAL_STATES)


async def enqueue_terminal(conn: asyncpg.Connection, job_ids: Iterable[str]) -> None:
    """Queue the report of each of these jobs that is now terminal (once per job).

    Call it inside the transaction that made the change. No job, no statement.
    """
    ids = sorted(set(job_ids))
    if ids:
        await conn.fetchval(_ENQUEUE, ids, _TERMINAL, JOB_ENDED_CHANNEL)


async def claim_unsent(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    """Unsent reports, oldest first, locked for this transaction (other publishers skip them)."""
    rows = await conn.fetch(
        "SELECT snapshot::text AS snapshot FROM sluice_report_outbox WHERE sent_at IS NULL"
        " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
    return [orjson.loads(r["snapshot"]) for r in rows]


async def mark_sent(conn: asyncpg.Connection, job_ids: Sequence[str]) -> None:
    """Record that the broker acknowledged these reports."""
    await conn.execute(
        "UPDATE sluice_report_outbox SET sent_at = now() WHERE job_id = ANY($1::text[])", list(job_ids))
