"""Job bookkeeping queries: create and seal a submission, read status and results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from app.store import reports
from schemas.vocabulary import RecordStatus

RESULT_STATUSES = tuple(RecordStatus)


async def create_receiving_job(
    pool: asyncpg.Pool, job_id: str, target: str, operation: str, records: int,
    *, tenant: str | None = None, principal: str | None = None,
    idempotency_key: str | None = None, request_fingerprint: str | None = None,
) -> None:
    """Record a job whose envelopes are about to be produced; the worker holds them until sealed.

    ``tenant`` owns the job: only that tenant sees it over HTTP. ``principal`` is who submitted it.
    ``idempotency_key`` (hashed) and ``request_fingerprint`` let a retry find the job.
    """
    await pool.execute(
        "INSERT INTO sluice_jobs (job_id, target, operation, source, state, records_received,"
        " tenant, principal, idempotency_key, request_fingerprint)"
        " VALUES ($1, $2, $3, 'http', 'receiving', $4, $5, $6, $7, $8)",
        job_id, target, operation, records, tenant, principal, idempotency_key, request_fingerprint,
    )


async def find_sealed_job(pool: asyncpg.Pool, tenant: str, idempotency_key: str) -> dict[str, Any] | None:
    """The latest job of this tenant sealed under this (hashed) idempotency key, if any.

    Sealed means its records were all in Kafka and it was (or was about to be) answered 202.
    """
    row = await pool.fetchrow(
        "SELECT * FROM sluice_jobs WHERE tenant = $1 AND idempotency_key = $2"
        " AND accepted_at IS NOT NULL ORDER BY created_at DESC LIMIT 1",
        tenant, idempotency_key,
    )
    return dict(row) if row is not None else None


async def seal_job(pool: asyncpg.Pool, job_id: str) -> dict[str, Any]:
    """Every envelope is in Kafka: let the worker apply them."""
    row = await pool.fetchrow(
        "UPDATE sluice_jobs SET state = 'accepted', accepted_at = now(), updated_at = now()"
        " WHERE job_id = $1 AND state = 'receiving' RETURNING *",
        job_id,
    )
    if row is None:
        raise LookupError(job_id)
    return dict(row)


async def fail_job(pool: asyncpg.Pool, job_id: str, reason: str) -> None:
    """A submission that could not be completed: none of its records will be applied."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE sluice_jobs SET state = 'failed', reason = $2, completed_at = now(),"
            " updated_at = now() WHERE job_id = $1 AND state = 'receiving'",
            job_id, reason,
        )
        await reports.enqueue_terminal(conn, [job_id])


async def abort_job(pool: asyncpg.Pool, job_id: str, tenant: str) -> dict[str, Any] | None:
    """Stop a running job: records not yet written will be reported as aborted.

    Returns the job after the change, or None if it was not running (unknown, another
    tenant's, still receiving, or already terminal).
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE sluice_jobs SET state = 'aborted', reason = 'aborted by the client',"
            " completed_at = now(), updated_at = now()"
            " WHERE job_id = $1 AND tenant = $2 AND source = 'http'"
            " AND state IN ('accepted', 'processing') RETURNING *",
            job_id, tenant,
        )
        await reports.enqueue_terminal(conn, [job_id])
    return dict(row) if row is not None else None


async def flag_stalled_jobs(pool: asyncpg.Pool, stall_s: float) -> tuple[list[str], int]:
    """Mark unfinished jobs that made no progress for ``stall_s``; returns (newly marked, all marked).

    Nothing accepted is thrown away: a stalled job keeps its state and its records, its
    ``reason`` says why it waits, and its next progress clears the mark (an outage of the
    database or of every worker only delays it). Each job is judged on its own progress.
    """
    rows = await pool.fetch(
        """
        UPDATE sluice_jobs SET stalled_since = now(), updated_at = now(),
            reason = format('no progress for %s s', $1::float8)
        WHERE source = 'http' AND state IN ('accepted', 'processing') AND stalled_since IS NULL
          AND coalesce(progressed_at, accepted_at) < now() - make_interval(secs => $1)
        RETURNING job_id
        """,
        stall_s,
    )
    marked = await pool.fetchval(
        "SELECT count(*) FROM sluice_jobs WHERE stalled_since IS NOT NULL"
        " AND state IN ('accepted', 'processing')")
    return [r["job_id"] for r in rows], int(marked)


async def get_job(pool: asyncpg.Pool, job_id: str) -> dict[str, Any] | None:
    """A job row, or None (any tenant: for internal use, not for HTTP)."""
    row = await pool.fetchrow("SELECT * FROM sluice_jobs WHERE job_id = $1", job_id)
    return dict(row) if row is not None else None


async def get_tenant_job(pool: asyncpg.Pool, job_id: str, tenant: str) -> dict[str, Any] | None:
    """A job row if it belongs to ``tenant``, else None, exactly as for an unknown id.

    Jobs without a tenant (Kafka producer partitions) belong to no HTTP tenant.
    """
    row = await pool.fetchrow("SELECT * FROM sluice_jobs WHERE job_id = $1 AND tenant = $2",
                              job_id, tenant)
    return dict(row) if row is not None else None


async def iter_results(
    pool: asyncpg.Pool, job_id: str, status: str | None, *, prefetch: int = 5000
) -> AsyncIterator[asyncpg.Record]:
    """Stream a job's per-record outcomes in index order, without loading them all."""
    query = "SELECT idx, status, key, code, message FROM sluice_record_results WHERE job_id = $1"
    args: list[Any] = [job_id]
    if status is not None:
        query += " AND status = $2"
        args.append(status)
    query += " ORDER BY idx"
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for record in conn.cursor(query, *args, prefetch=prefetch):
            yield record


async def pending_work(pool: asyncpg.Pool) -> tuple[int, float]:
    """(records accepted without an outcome, age in seconds of the oldest unfinished job)."""
    row = await pool.fetchrow(
        "SELECT coalesce(sum(records_received - succeeded - failed - duplicates), 0) AS depth,"
        " coalesce(extract(epoch FROM now() - min(accepted_at)), 0) AS age"
        " FROM sluice_jobs WHERE source = 'http' AND state IN ('accepted', 'processing')"
    )
    assert row is not None
    return int(row["depth"]), float(row["age"])
