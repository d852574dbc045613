"""The job store: the one owner of ``sluice_jobs`` and of every job state transition.

A job moves receiving -> accepted -> processing -> completed | completed_with_errors, or
ends failed or aborted. Each move is one named function here, run in the caller's
transaction where it must commit with other effects (the sink's rows, the report
outbox), and every transition into a terminal state queues the job's report. State
names come from ``JobState``: the SQL below is built from it, not spelled again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from app.errors import SluiceError
from app.store import reports
from schemas.sql import storable
from schemas.vocabulary import JobSource, JobState, RecordStatus

RESULT_STATUSES = tuple(RecordStatus)

_HTTP, _KAFKA = JobSource.HTTP, JobSource.KAFKA
_RECEIVING, _ACCEPTED, _PROCESSING = JobState.RECEIVING, JobState.ACCEPTED, JobState.PROCESSING
_FAILED, _ABORTED = JobState.FAILED, JobState.ABORTED
SEAL_GRACE_S = 5.0
"""Added to a submission's remaining timeout for its receive deadline: the seal's own
round trip, on the database's clock like the deadline itself."""
LEGACY_RECEIVE_S = 120.0

JOB_SETTLED_CHANNEL = "sluice_job_settled"
"""Notified (payload: the job id) when a receiving job is sealed or failed: the workers
holding its envelopes back look again at once (agents/apply/seal_signals.py)."""

_RUNNING = f"('{_ACCEPTED}', '{_PROCESSING}')"


def _past_deadline(legacy_s: str) -> str:
    """SQL true for a job past its receive deadline; ``legacy_s`` names the parameter
    holding LEGACY_RECEIVE_S, for a job from before deadlines were stored."""
    return f"now() > coalesce(receive_deadline, created_at + make_interval(secs => {legacy_s}))"

_HALTED = f"('{_FAILED}', '{_ABORTED}')"


# --- transitions -----------------------------------------------------------------------

async def create_receiving(
    pool: asyncpg.Pool, job_id: str, target: str, operation: str, records: int,
    *, seal_within_s: float, tenant: str | None = None, principal: str | None = None,
    idempotency_key: str | None = None, request_fingerprint: str | None = None,
    retry_of: str | None = None,
) -> None:
    """-> receiving: a submission whose envelopes are about to be produced (held until sealed;
    ``records`` so far: a big payload's job is recorded while it is parsed).

    ``seal_within_s``: what is left of the submission's timeout. The job must be sealed
    by then plus SEAL_GRACE_S on the database's clock, or it is failed (see
    still_receiving): the web process and the workers judge it by one clock.
    ``tenant`` owns the job: only that tenant sees it over HTTP. ``principal`` is who submitted it.
    ``idempotency_key`` (hashed) and ``request_fingerprint`` let a retry find the job.
    ``retry_of``: the job whose failed records this one sends again.
    """
    await pool.execute(
        "INSERT INTO sluice_jobs (job_id, target, operation, source, state, records_received,"
        " tenant, principal, idempotency_key, request_fingerprint, receive_deadline, retry_of)"
        f" VALUES ($1, $2, $3, '{_HTTP}', '{_RECEIVING}', $4, $5, $6, $7, $8,"
        " now() + make_interval(secs => $9), $10)",
        job_id, target, operation, records, tenant, principal, idempotency_key, request_fingerprint,
        max(0.0, seal_within_s) + SEAL_GRACE_S, retry_of,
    )


async def open_stream(conn: asyncpg.Connection, job_id: str, target: str, operation: str) -> None:
    """-> processing: the long-running job of a producer input partition, on its first records."""
    await conn.execute(
        "INSERT INTO sluice_jobs (job_id, target, operation, source, state, accepted_at)"
        f" VALUES ($1, $2, $3, '{_KAFKA}', '{_PROCESSING}', now()) ON CONFLICT DO NOTHING",
        job_id, target, operation,
    )


class SealRefused(SluiceError):
    """The job is no longer receiving: its deadline passed and a worker (or sweep) failed it."""


async def seal(pool: asyncpg.Pool, job_id: str, *, records: int | None = None,
               request_fingerprint: str | None = None) -> dict[str, Any]:
    """receiving -> accepted: every envelope is in Kafka; the workers may apply them.

    ``records`` is the final count (a big payload's job is recorded before it is parsed
    whole) and ``request_fingerprint`` the body's, now that it is read whole. Refused past
    the job's receive deadline, so that a job is either sealed in time or failed, never
    both: raises SealRefused.
    """
    row = await pool.fetchrow(
        f"UPDATE sluice_jobs SET state = '{_ACCEPTED}', accepted_at = now(), updated_at = now(),"
        " records_received = COALESCE($3, records_received),"
        " request_fingerprint = COALESCE($4, request_fingerprint)"
        f" WHERE job_id = $1 AND state = '{_RECEIVING}'"
        " AND (receive_deadline IS NULL OR now() <= receive_deadline)"
        " RETURNING *, pg_notify($2, job_id) AS notified",
        job_id, JOB_SETTLED_CHANNEL, records, request_fingerprint,
    )
    if row is None:
        raise SealRefused(job_id)
    sealed = dict(row)
    del sealed["notified"]
    return sealed


async def fail_submission(conn: asyncpg.Connection, job_id: str, reason: str) -> None:
    """receiving -> failed: the submission did not complete; none of its records is applied.

    Run it in a transaction: it queues the report.
    """
    await conn.execute(
        f"UPDATE sluice_jobs SET state = '{_FAILED}', reason = $2, completed_at = now(),"
        f" updated_at = now() WHERE job_id = $1 AND state = '{_RECEIVING}'"
        " RETURNING pg_notify($3, job_id)",
        job_id, reason, JOB_SETTLED_CHANNEL,
    )
    await reports.enqueue_terminal(conn, [job_id])


async def still_receiving(pool: asyncpg.Pool, job_ids: list[str]) -> set[str]:
    """Which of the jobs are receiving; those past their receive deadline are failed first.

    One query when none is past its deadline (every take of the apply loop asks); a
    transaction to fail those that are. A job from before deadlines were stored gets
    LEGACY_RECEIVE_S from its creation.
    """
    rows = await pool.fetch(
        f"SELECT job_id, {_past_deadline('$2')}"
        f" AS expired FROM sluice_jobs WHERE job_id = ANY($1::text[]) AND state = '{_RECEIVING}'",
        job_ids, LEGACY_RECEIVE_S,
    )
    if not any(r["expired"] for r in rows):
        return {r["job_id"] for r in rows}
    async with pool.acquire() as conn, conn.transaction():
        return await _fail_expired_among(conn, job_ids)


async def _fail_expired_among(conn: asyncpg.Connection, job_ids: list[str]) -> set[str]:
    """Fail the jobs past their receive deadline (queueing their reports); the rest that
    are receiving. Run it in a transaction."""
    expired = await conn.fetch(
        f"UPDATE sluice_jobs SET state = '{_FAILED}', completed_at = now(), updated_at = now(),"
        " reason = 'submission did not complete: not sealed by its deadline'"
        f" WHERE job_id = ANY($1::text[]) AND state = '{_RECEIVING}' AND {_past_deadline('$2')}"
        " RETURNING job_id",
        job_ids, LEGACY_RECEIVE_S,
    )
    if expired:
        await reports.enqueue_terminal(conn, [r["job_id"] for r in expired])
    rows = await conn.fetch(
        f"SELECT job_id FROM sluice_jobs WHERE job_id = ANY($1::text[]) AND state = '{_RECEIVING}'",
        job_ids,
    )
    return {r["job_id"] for r in rows}


async def fail_expired_submissions(pool: asyncpg.Pool) -> int:
    """Fail every job past its receive deadline (a sweep: a job whose web process died
    before producing anything has no envelope for a worker to notice it by)."""
    async with pool.acquire() as conn, conn.transaction():
        ids = [r["job_id"] for r in await conn.fetch(
            f"SELECT job_id FROM sluice_jobs WHERE state = '{_RECEIVING}' AND {_past_deadline('$1')}"
            " FOR UPDATE SKIP LOCKED",
            LEGACY_RECEIVE_S)]
        if ids:
            await _fail_expired_among(conn, ids)
    return len(ids)


async def fail_submission_now(pool: asyncpg.Pool, job_id: str, reason: str) -> None:
    """fail_submission in a transaction of its own (the web process, when produce failed)."""
    async with pool.acquire() as conn, conn.transaction():
        await fail_submission(conn, job_id, reason)


async def abort(pool: asyncpg.Pool, job_id: str, tenant: str) -> dict[str, Any] | None:
    """accepted | processing -> aborted: records not yet written will be reported as aborted.

    Returns the job after the change, or None if it was not running (unknown, another
    tenant's, still receiving, or already terminal).
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE sluice_jobs SET state = '{_ABORTED}', reason = 'aborted by the client',"
            " completed_at = now(), updated_at = now()"
            f" WHERE job_id = $1 AND tenant = $2 AND source = '{_HTTP}'"
            f" AND state IN {_RUNNING} RETURNING *",
            job_id, tenant,
        )
        await reports.enqueue_terminal(conn, [job_id])
    return dict(row) if row is not None else None


class Progress(NamedTuple):
    """A chunk's outcomes for one job."""

    succeeded: int
    failed: int
    duplicates: int
    aborted: int
    stream: bool
    """A producer partition's job: it receives as it goes and never completes."""


async def record_progress(
    conn: asyncpg.Connection, progress: Mapping[str, Progress]
) -> dict[str, dict[str, Any]]:
    """Add a chunk's outcomes to its jobs, in two statements whatever their number:
    -> processing, or -> completed | completed_with_errors once every received record has
    one. A halted job keeps its state; only its counts move. Clears stall marks.

    The jobs' rows are locked in job-id order first, so that two workers' transactions
    touching the same jobs cannot deadlock. Returns each existing job's snapshot after it.
    """
    if not progress:
        return {}
    ids = sorted(progress)
    await conn.execute(_LOCK_JOBS, ids)
    rows = await conn.fetch(
        _RECORD_PROGRESS, ids, [progress[j].succeeded for j in ids],
        [progress[j].failed for j in ids], [progress[j].duplicates for j in ids],
        [progress[j].aborted for j in ids], [progress[j].stream for j in ids])
    return {row["job_id"]: dict(row) for row in rows}


async def flag_stalled(pool: asyncpg.Pool, stall_s: float) -> tuple[list[str], int]:
    """Mark unfinished jobs that made no progress for ``stall_s``; returns (newly marked, all marked).

    Nothing accepted is thrown away: a stalled job keeps its state and its records, its
    ``reason`` says why it waits, and its next progress clears the mark (an outage of the
    database or of every worker only delays it). Each job is judged on its own progress.
    """
    rows = await pool.fetch(
        f"""
        UPDATE sluice_jobs SET stalled_since = now(), updated_at = now(),
            reason = format('no progress for %s s', $1::float8)
        WHERE source = '{_HTTP}' AND state IN {_RUNNING} AND stalled_since IS NULL
          AND coalesce(progressed_at, accepted_at) < now() - make_interval(secs => $1)
        RETURNING job_id
        """,
        stall_s,
    )
    marked = await pool.fetchval(
        f"SELECT count(*) FROM sluice_jobs WHERE stalled_since IS NOT NULL AND state IN {_RUNNING}")
    return [r["job_id"] for r in rows], int(marked)


# --- reads -------------------------------------------------------------------------------

async def lock_state(conn: asyncpg.Connection, job_id: str) -> JobState | None:
    """A job's state, its row locked until the caller's transaction ends (None: no such job)."""
    state = await conn.fetchval("SELECT state FROM sluice_jobs WHERE job_id = $1 FOR UPDATE", job_id)
    return None if state is None else JobState(state)


async def states_of(conn: asyncpg.Connection, job_ids: list[str]) -> list[asyncpg.Record]:
    """(job_id, state, tenant, created_at) of the jobs that exist among ``job_ids``."""
    return list(await conn.fetch(
        "SELECT job_id, state, tenant, created_at FROM sluice_jobs WHERE job_id = ANY($1::text[])",
        job_ids,
    ))


async def last_stream_topic_id(pool: asyncpg.Pool, topic: str) -> str | None:
    """The topic ID in the newest stream job of an input topic (its job ids end with it),
    or None if it has none (or only jobs from before topic IDs were part of them)."""
    job_id = await pool.fetchval(
        f"SELECT job_id FROM sluice_jobs WHERE source = '{_KAFKA}'"
        " AND starts_with(job_id, $1) ORDER BY created_at DESC LIMIT 1", topic + ":")
    if job_id is None or job_id.count(":") < 2:
        return None
    return str(job_id).rsplit(":", 1)[1]


async def find_sealed(pool: asyncpg.Pool, tenant: str, idempotency_key: str) -> dict[str, Any] | None:
    """The latest job of this tenant sealed under this (hashed) idempotency key, if any.

    Sealed means its records were all in Kafka and it was (or was about to be) answered 202.
    """
    row = await pool.fetchrow(
        "SELECT * FROM sluice_jobs WHERE tenant = $1 AND idempotency_key = $2"
        " AND accepted_at IS NOT NULL ORDER BY created_at DESC LIMIT 1",
        tenant, idempotency_key,
    )
    return dict(row) if row is not None else None


async def get_for_tenant(pool: asyncpg.Pool, job_id: str, tenant: str) -> dict[str, Any] | None:
    """A job row if it belongs to ``tenant``, else None, exactly as for an unknown id.

    Jobs without a tenant (Kafka producer partitions) belong to no HTTP tenant.
    """
    if not storable(job_id):
        return None
    row = await pool.fetchrow("SELECT * FROM sluice_jobs WHERE job_id = $1 AND tenant = $2",
                              job_id, tenant)
    return dict(row) if row is not None else None


class JobPage(NamedTuple):
    """One page of a tenant's jobs, newest first; ``after`` is where the next page starts
    (None on the last page)."""

    jobs: list[dict[str, Any]]
    after: tuple[datetime, str] | None


async def list_for_tenant(
    pool: asyncpg.Pool, tenant: str, *, limit: int, after: tuple[datetime, str] | None = None,
    state: JobState | None = None, target: str | None = None,
) -> JobPage:
    """A tenant's jobs, newest first, paged by (created_at, job_id) so that a page never
    repeats or skips a job however many are created meanwhile. Submissions still
    receiving are left out, as ``get_for_tenant``'s callers leave them out."""
    if target is not None and not storable(target):
        return JobPage([], None)
    rows = await pool.fetch(
        "SELECT * FROM sluice_jobs WHERE tenant = $1 AND state <> $2"
        " AND ($3::timestamptz IS NULL OR (created_at, job_id) < ($3, $4))"
        " AND ($5::text IS NULL OR state = $5) AND ($6::text IS NULL OR target = $6)"
        " ORDER BY created_at DESC, job_id DESC LIMIT $7",
        tenant, _RECEIVING, after[0] if after else None, after[1] if after else None,
        state, target, limit + 1)
    jobs = [dict(row) for row in rows[:limit]]
    more = len(rows) > limit
    return JobPage(jobs, (jobs[-1]["created_at"], jobs[-1]["job_id"]) if more else None)


async def unfinished_for_tenant(
    pool: asyncpg.Pool, tenant: str, receiving_window: timedelta
) -> list[dict[str, Any]]:
    """A tenant's running jobs (the ``sluice_jobs_unfinished`` index) and the jobs it created
    within ``receiving_window`` (``sluice_jobs_by_tenant``): every job of it that may still
    change, the ones still receiving included."""
    rows = await pool.fetch(
        f"SELECT * FROM sluice_jobs WHERE tenant = $1 AND state IN {_RUNNING}"
        " UNION SELECT * FROM sluice_jobs WHERE tenant = $1 AND created_at > now() - $2::interval",
        tenant, receiving_window)
    return [dict(row) for row in rows]


async def changes_for_watchers(
    pool: asyncpg.Pool, job_ids: list[str], tenants: list[str], created_since: datetime | None
) -> tuple[datetime, list[dict[str, Any]]]:
    """(the database's now, rows): the jobs ``job_ids`` by primary key, and the jobs of
    ``tenants`` created since ``created_since`` (by ``sluice_jobs_by_tenant``), in one
    round trip. Watchers compare the rows with what they last saw."""
    async with pool.acquire() as conn:
        now = await conn.fetchval("SELECT now()")
        rows = await conn.fetch(
            "SELECT * FROM sluice_jobs WHERE job_id = ANY($1::text[])"
            " UNION SELECT * FROM sluice_jobs WHERE tenant = ANY($2::text[])"
            " AND $3::timestamptz IS NOT NULL AND created_at > $3",
            job_ids, tenants, created_since)
    return now, [dict(row) for row in rows]


class Load(NamedTuple):
    """Unfinished HTTP jobs of one tenant on one target."""

    tenant: str
    target: str
    running_jobs: int
    queued_records: int
    """Accepted records without an outcome yet."""
    oldest_age_s: float
    """Since the oldest of these jobs was accepted."""


async def load_by_tenant_and_target(pool: asyncpg.Pool, tenant: str | None) -> list[Load]:
    """What is queued, per tenant and target (only ``tenant``'s when given), from the
    ``sluice_jobs_unfinished`` index: the dashboard's load and queue figures."""
    rows = await pool.fetch(
        "SELECT coalesce(tenant, '') AS tenant, target, count(*) AS jobs,"
        " sum(records_received - succeeded - failed - duplicates) AS queued,"
        " extract(epoch FROM now() - min(accepted_at)) AS age"
        f" FROM sluice_jobs WHERE source = '{_HTTP}' AND state IN {_RUNNING}"
        " AND ($1::text IS NULL OR tenant = $1) GROUP BY 1, 2 ORDER BY 4 DESC, 1, 2", tenant)
    return [Load(r["tenant"], r["target"], int(r["jobs"]), int(r["queued"]),
                 float(r["age"] or 0.0)) for r in rows]


async def pending_work_by_tenant(pool: asyncpg.Pool) -> tuple[dict[str, int], float]:
    """({tenant: records accepted without an outcome}, age in seconds of the oldest unfinished
    job), in one query. HTTP jobs without a
    tenant (older rows) count under ``""``."""
    rows = await pool.fetch(
        "SELECT coalesce(tenant, '') AS tenant,"
        " sum(records_received - succeeded - failed - duplicates) AS depth,"
        " extract(epoch FROM now() - min(accepted_at)) AS age"
        f" FROM sluice_jobs WHERE source = '{_HTTP}' AND state IN {_RUNNING} GROUP BY 1"
    )
    ages = [float(r["age"]) for r in rows if r["age"] is not None]
    return {r["tenant"]: int(r["depth"]) for r in rows}, max(ages, default=0.0)


_RECORD_PROGRESS = f"""
UPDATE sluice_jobs SET
    succeeded = succeeded + c.ok,
    failed = failed + c.bad,
    duplicates = duplicates + c.dup,
    aborted = sluice_jobs.aborted + c.dropped,
    records_received = records_received + CASE WHEN c.stream THEN c.ok + c.bad + c.dup ELSE 0 END,
    state = CASE
        WHEN state IN {_HALTED} THEN state
        WHEN c.stream THEN '{_PROCESSING}'
        WHEN succeeded + failed + duplicates + c.ok + c.bad + c.dup < records_received
        THEN '{_PROCESSING}'
        WHEN failed + c.bad > 0 THEN '{JobState.COMPLETED_WITH_ERRORS}'
        ELSE '{JobState.COMPLETED}' END,
    completed_at = CASE
        WHEN state IN {_HALTED} THEN completed_at
        WHEN NOT c.stream AND succeeded + failed + duplicates + c.ok + c.bad + c.dup >= records_received
        THEN now() END,
    progressed_at = now(),
    stalled_since = NULL,
    reason = CASE WHEN state IN {_HALTED} THEN reason END,
    updated_at = now()
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bool[])
    AS c(job_id, ok, bad, dup, dropped, stream)
WHERE sluice_jobs.job_id = c.job_id
RETURNING sluice_jobs.job_id, target, operation, source, state, records_received, succeeded,
          failed, duplicates, sluice_jobs.aborted, reason, created_at, accepted_at, updated_at,
          completed_at, tenant, principal
"""
_LOCK_JOBS = "SELECT FROM sluice_jobs WHERE job_id = ANY($1::text[]) ORDER BY job_id FOR UPDATE"
