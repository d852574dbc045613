"""GET /v1/overview: a tenant sees its own load; a token with ops:read sees every tenant's."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import asyncpg

from app.store import jobs
from tests.integration.conftest import Stack, bearer, token_for
from tests.integration.helpers import job_running_until_aborted


async def _overview(stack: Stack, token: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(stack.base_url, headers=bearer(token)) as http, \
            http.get("/v1/overview") as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def test_a_tenant_sees_its_own_load_and_an_operator_sees_every_tenant(
    stack: Stack, db: asyncpg.Pool,
) -> None:
    mine, theirs = (f"overview-{uuid.uuid4().hex[:6]}" for _ in range(2))
    started = [await job_running_until_aborted(db, mine, 40),
               await job_running_until_aborted(db, mine, 2),
               await job_running_until_aborted(db, theirs, 7)]
    try:
        own = await _overview(stack, token_for(stack.auth, subject="loader", tenant=mine))
        assert own["scope"] == "tenant"
        assert [(t["tenant"], t["running_jobs"], t["queued_records"]) for t in own["tenants"]] \
            == [(mine, 2, 42)]
        assert own["queue"]["records"] == 42 and own["queue"]["running_jobs"] == 2
        assert [(t["target"], t["queued_records"]) for t in own["targets"]] == [("sensor_readings", 42)]

        operator = token_for(stack.auth, subject="operator", tenant=mine,
                             scopes=("bulk:read", "ops:read"))
        everyone = await _overview(stack, operator)
        assert everyone["scope"] == "service"
        rows = {t["tenant"]: (t["running_jobs"], t["queued_records"]) for t in everyone["tenants"]}
        assert rows[mine] == (2, 42) and rows[theirs] == (1, 7)
        assert everyone["queue"]["records"] >= 49
        assert everyone["queue"]["oldest_age_s"] >= max(t["oldest_age_s"] for t in own["tenants"])
    finally:
        for job_id, tenant in zip(started, (mine, mine, theirs), strict=True):
            await jobs.abort(db, job_id, tenant)
