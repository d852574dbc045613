"""Job reports are never lost: the transition that ends a job queues its report in the same
transaction, and the worker publishes what is queued, marking it sent once acknowledged."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg

from tests.integration.conftest import Stack
from tests.integration.helpers import ndjson, reading, reports_for, submit, wait_terminal

REPORTS = "sluice.job-reports"


async def test_a_finished_job_and_an_aborted_one_are_each_reported_once(
    stack: Stack, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    tag = f"report-{uuid.uuid4().hex[:6]}"
    done = await submit(http, ndjson([reading(tag, i) for i in range(30)] + [{"sensor_id": 1}]))
    job = await wait_terminal(http, done["job_id"])
    big = await submit(http, ndjson([reading(f"{tag}-big", i) for i in range(60_000)]))
    async with http.delete(f"/v1/bulk-operations/{big['job_id']}") as r:
        assert r.status in (202, 409)  # 409: it finished before the abort
        aborted = await r.json() if r.status == 202 else await wait_terminal(http, big["job_id"])
    found = await asyncio.to_thread(reports_for, stack.kafka, {done["job_id"], big["job_id"]})
    (report,) = found[done["job_id"]]
    assert report["state"] == job["state"] == "completed_with_errors"
    assert (report["succeeded"], report["failed"], report["tenant"]) == (30, 1, "dev")
    (abort_report,) = found[big["job_id"]]
    assert abort_report["state"] == aborted["state"]
    assert await db.fetchval(
        "SELECT count(*) FROM sluice_report_outbox WHERE job_id = ANY($1::text[]) AND sent_at IS NOT NULL",
        [done["job_id"], big["job_id"]]) == 2


async def test_a_report_committed_but_not_published_is_published(
    stack: Stack, db: asyncpg.Pool
) -> None:
    # What a worker killed right after the commit that completed a job leaves behind: the
    # job terminal, its report queued, nothing on the topic.
    job_id = str(uuid.uuid4())
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO sluice_jobs (job_id, target, operation, source, state, records_received,"
            " succeeded, tenant, principal, accepted_at, completed_at)"
            " VALUES ($1, 'sensor_readings', 'insert', 'http', 'completed', 7, 7, 'dev', 'dev',"
            " now(), now())", job_id)
        await conn.execute(
            "INSERT INTO sluice_report_outbox (job_id, snapshot)"
            " SELECT job_id, to_jsonb(j) FROM sluice_jobs j WHERE job_id = $1", job_id)
    found = await asyncio.to_thread(reports_for, stack.kafka, {job_id})
    (report,) = found[job_id]
    assert (report["state"], report["succeeded"]) == ("completed", 7)
    assert await db.fetchval("SELECT sent_at IS NOT NULL FROM sluice_report_outbox WHERE job_id = $1",
                             job_id)
