"""Signed webhooks on the running stack, against real HTTP receivers on 127.0.0.1: a job's
end is delivered to each endpoint of its tenant only, signed, retried with growing waits
until a 2xx, with one delivery id throughout; given up after the maximum age (8 s on the
test stack); an aborted job is delivered too; a deleted endpoint gets nothing more."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from app.settings import env_var
from schemas.webhook_signature import ID_HEADER, SIGNATURE_HEADER, verify
from tests.integration.conftest import Stack, bearer, token_for
from tests.integration.helpers import (
    job_running_until_aborted,
    ndjson,
    reading,
    submit,
    wait_terminal,
)

MAX_AGE_S = 8.0
"""SLUICE_WEBHOOK_MAX_AGE_S on the test stack (conftest.py)."""
TIMEOUT_S = 1.0
"""SLUICE_WEBHOOK_TIMEOUT_S on the test stack."""


@dataclass
class Arrival:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server answering POSTs from a script: a status, or "hang" (no answer for
    longer than the stack's per-request timeout); the last entry repeats."""

    script: list[str]
    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrivals.append(Arrival(time.monotonic(), dict(request.headers), body))
        step = self.script[min(len(self.arrivals), len(self.script)) - 1]
        if step == "hang":
            await asyncio.sleep(TIMEOUT_S * 3)
            return web.Response(status=200)
        return web.Response(status=int(step), text="a body nobody reads " * 1000)


@asynccontextmanager
async def receiver(*script: str) -> AsyncIterator[Receiver]:
    """A Receiver listening on a free port of 127.0.0.1 until the block ends."""
    served = Receiver(list(script))
    app = web.Application()
    app.router.add_post("/hook", served.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    served.url = f"http://127.0.0.1:{port}/hook?token=not-logged"
    try:
        yield served
    finally:
        await runner.cleanup()


@asynccontextmanager
async def tenant_client(stack: Stack, name: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the stack as the dev role of a tenant of its own."""
    headers = bearer(token_for(stack.auth, subject=f"{name}-user", tenant=name))
    async with aiohttp.ClientSession(stack.base_url, headers=headers) as session:
        yield session


async def register(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.post("/v1/webhooks", json={"url": url, "events": ["job.ended"]}) as r:
        created: dict[str, Any] = await r.json()
        assert r.status == 201, created
        assert r.headers["Location"] == f"/v1/webhooks/{created['id']}"
        return created


async def deliveries(http: aiohttp.ClientSession, webhook_id: str,
                     **params: str) -> list[dict[str, Any]]:
    async with http.get(f"/v1/webhooks/{webhook_id}/deliveries", params=params) as r:
        page = await r.json()
        assert r.status == 200, page
        return list(page["deliveries"])


async def eventually(check: Callable[[], Any], wait_s: float, what: str) -> Any:
    """Poll ``check`` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {wait_s} s: {what}")


def arrived(served: Receiver) -> Callable[[], Any]:
    async def check() -> list[Arrival]:
        return served.arrivals
    return check


def tenant(tag: str) -> str:
    return f"wh-{tag}-{uuid.uuid4().hex[:8]}"


async def test_a_job_end_is_delivered_signed_and_retried_with_growing_waits_to_its_tenant_only(
    stack: Stack,
) -> None:
    async with receiver("500", "500", "hang", "200") as hooks, receiver("200") as other_hooks, \
            tenant_client(stack, tenant("a")) as http, tenant_client(stack, tenant("b")) as other:
        endpoint = await register(http, hooks.url)
        other_endpoint = await register(other, other_hooks.url)
        # The secret is shown once; another tenant's endpoint is as unknown as none.
        async with http.get(f"/v1/webhooks/{endpoint['id']}") as r:
            assert r.status == 200 and "secret" not in await r.json()
        for method, path in (("GET", ""), ("GET", "/deliveries"), ("DELETE", "")):
            async with other.request(method, f"/v1/webhooks/{endpoint['id']}{path}") as r:
                assert r.status == 404, await r.text()
        async with other.get("/v1/webhooks") as r:
            assert [w["id"] for w in (await r.json())["webhooks"]] == [other_endpoint["id"]]

        job = await submit(http, ndjson([reading(f"wh-{uuid.uuid4().hex[:6]}", i) for i in range(5)]))
        ended = await wait_terminal(http, job["job_id"])

        async def delivered() -> list[dict[str, Any]]:
            return [d for d in await deliveries(http, endpoint["id"]) if d["state"] == "delivered"]

        (delivery,) = await eventually(delivered, 20, "the delivery answered 200")
        await asyncio.sleep(0.5)  # nothing more after the 2xx
        assert len(hooks.arrivals) == 4

    # Every attempt: the same body and id, signed afresh with the endpoint's secret.
    bodies = {arrival.body for arrival in hooks.arrivals}
    assert len(bodies) == 1
    body = bodies.pop()
    sent = orjson.loads(body)
    assert {a.headers[ID_HEADER] for a in hooks.arrivals} == {sent["id"]} == {delivery["id"]}
    stamps = [verify(endpoint["secret"], a.headers[SIGNATURE_HEADER], a.body, tolerance_s=60)
              for a in hooks.arrivals]
    assert stamps == sorted(stamps)
    assert all(a.headers["Content-Type"] == "application/json"
               and a.headers["User-Agent"].startswith("Sluice-Webhooks/") for a in hooks.arrivals)
    assert sent["type"] == "job.ended"
    data = sent["data"]
    assert (data["job_id"], data["state"], data["succeeded"]) == (job["job_id"], ended["state"], 5)
    assert data["tenant"].startswith("wh-a-")

    # The log: three failures, then delivered; each wait longer than the last, and kept.
    assert (delivery["job_id"], delivery["attempts"], delivery["last_status"],
            delivery["last_error"], delivery["next_attempt_at"]) == (job["job_id"], 4, 200, None, None)
    assert delivery["delivered_at"] is not None
    history = delivery["history"]
    assert [h["status"] for h in history] == [500, 500, None, 200]
    assert [h["error"] for h in history][:2] == ["HTTP 500", "HTTP 500"]
    assert history[2]["error"].startswith("timeout")
    waits = [h["retry_in_s"] for h in history[:3]]
    assert waits[0] < waits[1] < waits[2] and history[3]["retry_in_s"] is None
    gaps = [later.at - earlier.at for earlier, later in zip(hooks.arrivals, hooks.arrivals[1:], strict=False)]
    assert gaps[0] >= waits[0] - 0.02 and gaps[1] >= waits[1] - 0.02
    assert gaps[2] >= TIMEOUT_S + waits[2] - 0.05

    # The other tenant's endpoint heard nothing of it.
    assert other_hooks.arrivals == []
    port = stack.env[env_var("worker_metrics_port")]
    async with aiohttp.ClientSession() as scrape, scrape.get(f"http://127.0.0.1:{port}/metrics") as r:
        exposition = await r.text()
    assert 'sluice_webhook_attempts_total{outcome="delivered"}' in exposition
    assert 'sluice_webhook_attempts_total{outcome="rejected"}' in exposition
    assert "sluice_webhook_deliveries_pending" in exposition


async def test_a_delivery_never_answered_2xx_is_given_up_after_the_maximum_age(stack: Stack) -> None:
    async with receiver("503") as hooks, tenant_client(stack, tenant("c")) as http:
        endpoint = await register(http, hooks.url)
        job = await submit(http, ndjson([reading(f"wh-{uuid.uuid4().hex[:6]}", 0)]))

        async def failed() -> list[dict[str, Any]]:
            return await deliveries(http, endpoint["id"], state="failed")

        (delivery,) = await eventually(failed, MAX_AGE_S + 10, "the delivery given up")
        attempts = len(hooks.arrivals)
        await asyncio.sleep(1.0)
        assert len(hooks.arrivals) == attempts, "attempted again after it was given up"
        assert await deliveries(http, endpoint["id"], state="pending") == []
    assert (delivery["job_id"], delivery["state"], delivery["attempts"], delivery["last_status"],
            delivery["last_error"], delivery["next_attempt_at"], delivery["delivered_at"]) == (
        job["job_id"], "failed", attempts, 503, "HTTP 503", None, None)
    assert attempts >= 5
    span = hooks.arrivals[-1].at - hooks.arrivals[0].at
    assert MAX_AGE_S - 1.5 <= span <= MAX_AGE_S + 1.5


async def test_an_aborted_job_is_delivered_and_a_deleted_endpoint_gets_nothing_more(
    stack: Stack, db: asyncpg.Pool,
) -> None:
    name = tenant("d")
    async with receiver("200") as hooks, receiver("500") as failing, \
            tenant_client(stack, name) as http:
        kept = await register(http, hooks.url)
        dropped = await register(http, failing.url)
        job_id = await job_running_until_aborted(db, name)
        async with http.delete(f"/v1/bulk-operations/{job_id}") as r:
            assert r.status == 202, await r.text()
        await eventually(arrived(failing), 10, "a first failed attempt")
        async with http.delete(f"/v1/webhooks/{dropped['id']}") as r:
            assert r.status == 204
        seen = len(failing.arrivals)
        await eventually(arrived(hooks), 10, "the abort delivered")
        await asyncio.sleep(1.5)  # past two retry waits of the deleted endpoint
        assert len(failing.arrivals) == seen
        async with http.get(f"/v1/webhooks/{dropped['id']}/deliveries") as r:
            assert r.status == 404
        async with http.get("/v1/webhooks") as r:
            assert [w["id"] for w in (await r.json())["webhooks"]] == [kept["id"]]
    (arrival,) = hooks.arrivals
    report = orjson.loads(arrival.body)["data"]
    assert (report["job_id"], report["state"]) == (job_id, "aborted")
