"""Live job events over Server-Sent Events and WebSocket, on the live stack; and the hub's
buffers and discovery on the stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from app.store import jobs
from app.store.jobs import Progress
from tests.integration.conftest import Stack, bearer, token_for
from tests.integration.helpers import (
    big_job,
    job_of,
    job_running_until_aborted,
    ndjson,
    reading,
    submit,
)
from web.event_streams import WEBSOCKET_PROTOCOL
from web.job_events import JobEventHub, SlowSubscriber, UnknownJob

COUNT_NAMES = ("received", "succeeded", "failed", "duplicates", "aborted")


async def _sse_events(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every event of a Server-Sent Events stream until the server ends it."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in fields:
                events.append({"event": fields.get("event"), "id": fields.get("id"),
                               **orjson.loads(fields["data"])})
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


async def test_a_job_streams_its_progress_then_one_ended_event_with_its_failures(
    http: aiohttp.ClientSession,
) -> None:
    tag = f"events-{uuid.uuid4().hex[:6]}"
    body, _ = big_job(tag, 10_000, invalid_every=3_000)
    job_id = (await submit(http, body))["job_id"]
    async with http.get(f"/v1/bulk-operations/{job_id}/events",
                        timeout=aiohttp.ClientTimeout(total=120)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = await _sse_events(r)  # ends by itself after the job's end
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "ended" and kinds.count("ended") == 1, kinds
    assert all(e["event"] == e["type"] for e in events)
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    done = [sum(e["job"]["counts"][n] for n in ("succeeded", "failed", "duplicates"))
            for e in events]
    assert done == sorted(done), "counts only grow"
    final, job = events[-1], await job_of(http, job_id)
    assert final["job"]["counts"] == job["counts"] and final["job"]["state"] == job["state"]
    assert job["counts"]["failed"] == 3
    assert [(f["code"], f["records"]) for f in final["failures"]] == [("wrong_type", 3)]
    examples = final["failures"][0]["examples"]
    assert [e["index"] for e in examples] == sorted(e["index"] for e in examples)
    assert len(examples) == 3 and all(e["record"] and e["message"] for e in examples)

    # A job that has ended already: its stream is its ended event alone.
    async with http.get(f"/v1/bulk-operations/{job_id}/events") as r:
        again = await _sse_events(r)
    assert [e["type"] for e in again] == ["ended"]


async def test_a_browser_style_websocket_follows_its_tenant_and_sees_no_other(
    stack: Stack, http: aiohttp.ClientSession,
) -> None:
    """The token offered as a subprotocol (what a browser can send); two jobs of the
    tenant end once each on the stream; another tenant's job never shows."""
    tenant = f"events-{uuid.uuid4().hex[:6]}"
    token = token_for(stack.auth, subject="watcher", tenant=tenant)
    mine = aiohttp.ClientSession(stack.base_url, headers=bearer(token))
    async with mine, mine.ws_connect(
            "/v1/events", protocols=(WEBSOCKET_PROTOCOL, f"bearer.{token}")) as ws:
        assert ws.protocol == WEBSOCKET_PROTOCOL
        await asyncio.sleep(0.3)
        ours = {(await submit(mine, ndjson([reading(tenant, i) for i in range(first, first + n)]))
                 )["job_id"] for first, n in ((0, 5), (10, 2_000))}
        theirs = (await submit(http, ndjson([reading(tenant, 99)])))["job_id"]  # the dev tenant's
        ended: list[str] = []
        seen: set[str] = set()
        async with asyncio.timeout(60):
            while set(ended) != ours:
                event = orjson.loads((await ws.receive()).data)
                seen.add(event["job"]["job_id"])
                if event["type"] == "ended":
                    ended.append(event["job"]["job_id"])
                    assert event["job"]["counts"]["succeeded"] in (5, 2_000)
        await asyncio.sleep(1.5)  # a few more ticks: no second ended event, no other tenant's job
        while not ws.closed:
            try:
                message = await ws.receive(timeout=0.2)
            except TimeoutError:
                break
            event = orjson.loads(message.data)
            seen.add(event["job"]["job_id"])
            assert event["type"] != "ended", "an ended job reported twice"
    assert sorted(ended) == sorted(ours)
    assert theirs not in seen


async def test_the_streams_need_a_token_with_the_read_scope_and_the_tenant_s_job(
    stack: Stack, http: aiohttp.ClientSession,
) -> None:
    job_id = (await submit(http, ndjson([reading(f"events-{uuid.uuid4().hex[:6]}", 0)])))["job_id"]
    async with aiohttp.ClientSession(stack.base_url) as anonymous:
        for path in (f"/v1/bulk-operations/{job_id}/events", "/v1/events"):
            async with anonymous.get(path) as r:
                assert r.status == 401
            async with anonymous.get(path, headers=bearer(token_for(
                    stack.auth, subject="write-only", scopes=("bulk:write",)))) as r:
                assert r.status == 403
                assert (await r.json())["type"].endswith("/insufficient-scope")
        stranger = bearer(token_for(stack.auth, subject="stranger", tenant="another-tenant"))
        async with anonymous.get(f"/v1/bulk-operations/{job_id}/events", headers=stranger) as r:
            assert r.status == 404
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await anonymous.ws_connect(f"/v1/bulk-operations/{job_id}/events",
                                       protocols=(WEBSOCKET_PROTOCOL, "bearer.not-a-token"))
        assert refused.value.status == 401


# --- the hub itself, on the stack's database ----------------------------------------------

async def _progress(db: asyncpg.Pool, job_id: str, succeeded: int) -> None:
    async with db.acquire() as conn, conn.transaction():
        await jobs.record_progress(conn, {job_id: Progress(succeeded, 0, 0, 0, False)})


async def test_a_watcher_that_does_not_read_is_dropped_and_the_others_get_every_change(
    db: asyncpg.Pool,
) -> None:
    tenant = f"events-{uuid.uuid4().hex[:6]}"
    hub = JobEventHub(db, tick_s=3600, buffer=3, receiving_window_s=60, max_watchers=10)  # ticked by hand
    job_id = await job_running_until_aborted(db, tenant, 100)
    try:
        async with hub.job(job_id, tenant) as idle, hub.job(job_id, tenant) as reader:
            seen = [(await reader.next(1)).job["succeeded"]]  # type: ignore[union-attr]
            for _ in range(5):
                await _progress(db, job_id, 10)
                await hub.tick()
                update = await reader.next(1)
                assert update is not None
                seen.append(update.job["succeeded"])
            await hub.tick()  # nothing changed: nothing offered
            assert await reader.next(0.05) is None
            assert seen == [0, 10, 20, 30, 40, 50]
            assert idle.dropped and not reader.dropped
            with pytest.raises(SlowSubscriber):
                for _ in range(4):
                    await idle.next(1)
        with pytest.raises(UnknownJob):
            async with hub.job(job_id, "another-tenant"):
                pass
    finally:
        await hub.stop()


async def test_a_job_that_starts_and_ends_between_two_ticks_is_reported_once(
    db: asyncpg.Pool,
) -> None:
    tenant = f"events-{uuid.uuid4().hex[:6]}"
    hub = JobEventHub(db, tick_s=3600, buffer=100, receiving_window_s=60, max_watchers=10)
    try:
        async with hub.tenant(tenant) as watcher:
            await hub.tick()
            job_id = await job_running_until_aborted(db, tenant, 10)
            await _progress(db, job_id, 10)  # accepted and completed before the next tick
            for _ in range(3):
                await hub.tick()
            update = await watcher.next(1)
            assert update is not None and update.final
            assert update.job["job_id"] == job_id and update.job["state"] == "completed"
            assert await watcher.next(0.05) is None, "reported once"
    finally:
        await hub.stop()
