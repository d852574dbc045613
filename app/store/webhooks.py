"""The webhook store: the one owner of ``sluice_webhook_endpoints`` and
``sluice_webhook_deliveries``, and of every delivery state transition.

A delivery is queued by the statement that queues its job's report (``QUEUE_JOB_ENDED``,
part of reports.enqueue_terminal), so no job ends without one per endpoint of its tenant.
The runner claims due deliveries with a lease (``claim_due``: FOR UPDATE SKIP LOCKED,
committed at once, so no lock is held during the HTTP request and a worker that dies
mid-request only delays its delivery by the lease), then records each attempt: 2xx ->
delivered; otherwise pending again after a backoff, or failed once past the maximum age.
State names come from ``DeliveryState``: the SQL below is built from it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from app.errors import SluiceError
from schemas.sql import storable
from schemas.webhooks import DeliveryState, WebhookEvent

_PENDING, _DELIVERED, _FAILED = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.FAILED
HISTORY_KEPT = 50
"""Attempts kept in a delivery's history (24 h at a 1 h cap takes about 33)."""
_TENANT_LOCK_CLASS = 0x5E1C_0015
"""Advisory lock class of a tenant's endpoint list: the limit is checked and the endpoint
added under it, so that two registrations at once cannot both take the last place."""

DDL = f"""
CREATE TABLE IF NOT EXISTS sluice_webhook_endpoints (
    endpoint_id text PRIMARY KEY,
    tenant      text NOT NULL,
    url         text NOT NULL,
    events      text[] NOT NULL,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sluice_webhook_endpoints_tenant
    ON sluice_webhook_endpoints (tenant, created_at);
CREATE TABLE IF NOT EXISTS sluice_webhook_deliveries (
    delivery_id     text PRIMARY KEY,
    endpoint_id     text NOT NULL REFERENCES sluice_webhook_endpoints ON DELETE CASCADE,
    job_id          text NOT NULL,
    event           text NOT NULL,
    report          jsonb NOT NULL,
    state           text NOT NULL DEFAULT '{_PENDING}',
    attempts        integer NOT NULL DEFAULT 0,
    last_status     integer,
    last_error      text,
    history         jsonb NOT NULL DEFAULT '[]',
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, job_id, event)
);
CREATE INDEX IF NOT EXISTS sluice_webhook_deliveries_due
    ON sluice_webhook_deliveries (next_attempt_at) WHERE state = '{_PENDING}';
CREATE INDEX IF NOT EXISTS sluice_webhook_deliveries_log
    ON sluice_webhook_deliveries (endpoint_id, created_at DESC, delivery_id DESC);
"""

QUEUE_JOB_ENDED = f"""
INSERT INTO sluice_webhook_deliveries (delivery_id, endpoint_id, job_id, event, report)
SELECT gen_random_uuid()::text, e.endpoint_id, q.job_id, '{WebhookEvent.JOB_ENDED}', q.snapshot
FROM queued q JOIN sluice_webhook_endpoints e
    ON e.tenant = q.snapshot->>'tenant' AND '{WebhookEvent.JOB_ENDED}' = ANY(e.events)
ON CONFLICT DO NOTHING
"""
"""A data-modifying CTE for reports.enqueue_terminal: one delivery per endpoint of the
job's tenant for each report that statement queues (``queued``: job_id, snapshot)."""

_ENDPOINT_COLUMNS = "endpoint_id, tenant, url, events, created_at"
_DELIVERY_COLUMNS = ("delivery_id, endpoint_id, job_id, event, state, attempts, last_status,"
                     " last_error, history::text AS history, next_attempt_at, created_at,"
                     " delivered_at")


class EndpointLimitReached(SluiceError):
    """The tenant already has as many endpoints as it may."""


# --- endpoints ---------------------------------------------------------------------------

async def create_endpoint(pool: asyncpg.Pool, tenant: str, url: str,
                          events: Sequence[WebhookEvent], secret: str, *,
                          max_per_tenant: int) -> dict[str, Any]:
    """Register an endpoint (its secret is returned by the caller once, never read back
    through the API); EndpointLimitReached if the tenant has ``max_per_tenant`` already."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                           _TENANT_LOCK_CLASS, tenant)
        count = await conn.fetchval(
            "SELECT count(*) FROM sluice_webhook_endpoints WHERE tenant = $1", tenant)
        if count >= max_per_tenant:
            raise EndpointLimitReached(tenant)
        row = await conn.fetchrow(
            "INSERT INTO sluice_webhook_endpoints (endpoint_id, tenant, url, events, secret)"
            f" VALUES ($1, $2, $3, $4, $5) RETURNING {_ENDPOINT_COLUMNS}",
            str(uuid.uuid4()), tenant, url, [str(e) for e in events], secret)
    return dict(row)


async def list_endpoints(pool: asyncpg.Pool, tenant: str) -> list[dict[str, Any]]:
    """A tenant's endpoints, oldest first, without their secrets."""
    rows = await pool.fetch(f"SELECT {_ENDPOINT_COLUMNS} FROM sluice_webhook_endpoints"
                            " WHERE tenant = $1 ORDER BY created_at, endpoint_id", tenant)
    return [dict(r) for r in rows]


async def get_endpoint(pool: asyncpg.Pool, tenant: str, endpoint_id: str) -> dict[str, Any] | None:
    """The tenant's endpoint (no secret), or None: another tenant's is as unknown as none."""
    if not storable(endpoint_id):
        return None
    row = await pool.fetchrow(f"SELECT {_ENDPOINT_COLUMNS} FROM sluice_webhook_endpoints"
                              " WHERE endpoint_id = $1 AND tenant = $2", endpoint_id, tenant)
    return dict(row) if row is not None else None


async def delete_endpoint(pool: asyncpg.Pool, tenant: str, endpoint_id: str) -> bool:
    """Remove the tenant's endpoint with its deliveries (pending ones are never sent);
    False if it has none by that id."""
    if not storable(endpoint_id):
        return False
    deleted = await pool.fetchval(
        "DELETE FROM sluice_webhook_endpoints WHERE endpoint_id = $1 AND tenant = $2"
        " RETURNING endpoint_id", endpoint_id, tenant)
    return deleted is not None


# --- the delivery log --------------------------------------------------------------------

class DeliveryPage(NamedTuple):
    """One page of an endpoint's deliveries, newest first; ``after`` is where the next page
    starts (None on the last page)."""

    deliveries: list[dict[str, Any]]
    after: tuple[datetime, str] | None


async def list_deliveries(pool: asyncpg.Pool, endpoint_id: str, *, limit: int,
                          after: tuple[datetime, str] | None = None,
                          state: DeliveryState | None = None) -> DeliveryPage:
    """An endpoint's deliveries, newest first, paged by (created_at, delivery_id)."""
    rows = await pool.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM sluice_webhook_deliveries WHERE endpoint_id = $1"
        " AND ($2::timestamptz IS NULL OR (created_at, delivery_id) < ($2, $3))"
        " AND ($4::text IS NULL OR state = $4)"
        " ORDER BY created_at DESC, delivery_id DESC LIMIT $5",
        endpoint_id, after[0] if after else None, after[1] if after else None, state, limit + 1)
    deliveries = [dict(r) for r in rows[:limit]]
    more = len(rows) > limit
    return DeliveryPage(deliveries,
                        (deliveries[-1]["created_at"], deliveries[-1]["delivery_id"]) if more else None)


# --- the runner's side -------------------------------------------------------------------

class Due(NamedTuple):
    """A claimed delivery: what the runner needs to make one attempt."""

    delivery_id: str
    endpoint_id: str
    job_id: str
    event: WebhookEvent
    report: str
    """The job's snapshot as JSON text (schemas.job_report.job_report picks the fields sent)."""
    attempt: int
    """This attempt's number, 1 for the first."""
    created_at: datetime
    url: str
    secret: str


async def claim_due(pool: asyncpg.Pool, limit: int, lease_s: float) -> list[Due]:
    """Up to ``limit`` due deliveries, oldest due first, each counted as attempted and
    leased for ``lease_s`` (not due again before then, whoever else looks)."""
    rows = await pool.fetch(
        "UPDATE sluice_webhook_deliveries d SET attempts = d.attempts + 1,"
        " next_attempt_at = now() + make_interval(secs => $2)"
        " FROM (SELECT delivery_id FROM sluice_webhook_deliveries"
        f"       WHERE state = '{_PENDING}' AND next_attempt_at <= now()"
        "       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due,"
        " sluice_webhook_endpoints e"
        " WHERE d.delivery_id = due.delivery_id AND e.endpoint_id = d.endpoint_id"
        " RETURNING d.delivery_id, d.endpoint_id, d.job_id, d.event, d.report::text AS report,"
        " d.attempts, d.created_at, e.url, e.secret",
        limit, lease_s)
    return [Due(r["delivery_id"], r["endpoint_id"], r["job_id"], WebhookEvent(r["event"]),
                r["report"], r["attempts"], r["created_at"], r["url"], r["secret"])
            for r in rows]


class Attempt(NamedTuple):
    """How one attempt went, as the delivery log keeps it (no response body, ever)."""

    delivered: bool
    status: int | None
    """The HTTP status answered, None when there was no answer."""
    error: str | None
    """Why it was not delivered, short and free of the URL's path and query."""
    duration_s: float


async def record_attempt(pool: asyncpg.Pool, due: Due, attempt: Attempt, *, retry_in_s: float,
                         max_age_s: float) -> DeliveryState | None:
    """Record an attempt; the delivery's state after it (None: it is gone, or a later
    attempt has been claimed meanwhile and this failure is not news).

    2xx -> delivered. Otherwise pending again in ``retry_in_s`` (never past ``max_age_s``
    after the delivery was created), or failed if that moment has come: one clock, the
    database's.
    """
    state = await pool.fetchval(
        f"""
        WITH judged AS (
            SELECT delivery_id, CASE
                WHEN $2 THEN '{_DELIVERED}'
                WHEN now() >= created_at + make_interval(secs => $6) THEN '{_FAILED}'
                ELSE '{_PENDING}' END AS state,
                least(now() + make_interval(secs => $5), created_at + make_interval(secs => $6))
                    AS retry_at
            FROM sluice_webhook_deliveries
            WHERE delivery_id = $1 AND state = '{_PENDING}' AND ($2 OR attempts = $7)
        )
        UPDATE sluice_webhook_deliveries d SET
            state = j.state,
            delivered_at = CASE WHEN $2 THEN now() END,
            next_attempt_at = CASE WHEN j.state = '{_PENDING}' THEN j.retry_at
                                   ELSE d.next_attempt_at END,
            last_status = $3, last_error = $4,
            history = (CASE WHEN jsonb_array_length(d.history) >= {HISTORY_KEPT}
                            THEN d.history - 0 ELSE d.history END)
                || jsonb_build_array(jsonb_build_object(
                    'attempt', $7::int,
                    'attempted_at', now() - make_interval(secs => $8),
                    'duration_ms', round($8 * 1000)::int,
                    'status', $3::int, 'error', $4::text,
                    'retry_in_s', CASE WHEN j.state = '{_PENDING}'
                        THEN round(extract(epoch FROM j.retry_at - now())::numeric, 3) END))
        FROM judged j WHERE d.delivery_id = j.delivery_id
        RETURNING d.state
        """,
        due.delivery_id, attempt.delivered, attempt.status, attempt.error, retry_in_s, max_age_s,
        due.attempt, attempt.duration_s)
    return None if state is None else DeliveryState(state)


async def pending_count(pool: asyncpg.Pool) -> int:
    """Deliveries not yet delivered nor given up (the pending gauge)."""
    return int(await pool.fetchval(
        f"SELECT count(*) FROM sluice_webhook_deliveries WHERE state = '{_PENDING}'"))


async def prune(pool: asyncpg.Pool, retention_days: int) -> int:
    """Forget delivered and failed deliveries older than ``retention_days``; how many."""
    deleted = await pool.fetchval(
        "WITH gone AS (DELETE FROM sluice_webhook_deliveries"
        f" WHERE state <> '{_PENDING}' AND created_at < now() - make_interval(days => $1)"
        " RETURNING 1) SELECT count(*) FROM gone", retention_days)
    return int(deleted)
