"""GET /v1/bulk-operations/{job_id}/events and GET /v1/events: live job events, over a
WebSocket when the client asks to upgrade, else as Server-Sent Events.

Both carry the same JSON events: ``{"type": "progress" | "ended", "job": <the job as GET
shows it>}``, the ``ended`` one with ``failures`` (failed records by code, with the first
examples). A job's stream starts with its current state and ends after its ``ended``
event; a tenant's stream starts with its unfinished jobs and stays open. Each event is
written with a deadline: a client that does not read is dropped (web/job_events.py),
never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from app.store import ledger
from web.auth import SCOPE_READ
from web.job_events import (
    HubClosed,
    JobUpdate,
    SlowSubscriber,
    Subscription,
    UnknownJob,
    job_events_key,
)
from web.problems import Problem, ProblemType
from web.security import require_scope
from web.typedefs import pool_key, settings_key
from web.views import job_body

log = logging.getLogger(__name__)

WEBSOCKET_PROTOCOL = "sluice.v1"
"""The WebSocket subprotocol; a browser, which cannot set Authorization on a WebSocket,
offers its token as a second one, ``bearer.<token>`` (web/security.py)."""
WRITE_TIMEOUT_S = 10.0
"""An event not taken by the client's connection within this is a client not reading."""
FAILURE_EXAMPLES = 3
SSE_RETRY_MS = 2000
GONE_CHECK_S = 1.0
WS_TRY_AGAIN_LATER = 1013
"""WebSocket close code (RFC 6455 registry) for a client dropped for falling behind."""


def event_type(update: JobUpdate) -> str:
    return "ended" if update.final else "progress"


async def event_body(request: web.Request, update: JobUpdate) -> dict[str, Any]:
    """An update as both transports send it."""
    body: dict[str, Any] = {"type": event_type(update), "job": job_body(request, update.job)}
    if update.final:
        body["failures"] = (await ledger.failures_by_code(
            request.app[pool_key], update.job["job_id"], FAILURE_EXAMPLES)
            if update.job["failed"] else [])
    return body


async def job_events(request: web.Request) -> web.StreamResponse:
    """One job's events until it ends."""
    principal = require_scope(request, SCOPE_READ)
    job_id = request.match_info["job_id"]
    try:
        async with request.app[job_events_key].job(job_id, principal.tenant) as subscription:
            return await _stream(request, subscription)
    except UnknownJob:
        raise Problem(404, "Job not found", f"no job {job_id!r}",
                      slug=ProblemType.JOB_NOT_FOUND) from None


async def tenant_events(request: web.Request) -> web.StreamResponse:
    """Every job of the caller's tenant, until the client leaves."""
    principal = require_scope(request, SCOPE_READ)
    async with request.app[job_events_key].tenant(principal.tenant) as subscription:
        return await _stream(request, subscription)


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every event stream, so that open ones do not hold the process up."""
    if job_events_key in app:
        app[job_events_key].close_all()


def _wants_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


async def _stream(request: web.Request, subscription: Subscription) -> web.StreamResponse:
    keepalive_s = request.app[settings_key].events_keepalive_s
    if _wants_websocket(request):
        return await _websocket(request, subscription, keepalive_s)
    return await _server_sent_events(request, subscription, keepalive_s)


async def _updates(request: web.Request, subscription: Subscription, keepalive_s: float,
                   ) -> AsyncIterator[JobUpdate | None]:
    """The subscription's updates, with None after ``keepalive_s`` without one; ends when
    the client has gone (looked at every GONE_CHECK_S: aiohttp does not cancel a handler
    whose client left, and an idle stream would otherwise hold its watcher until its next
    keep-alive write fails)."""
    loop = asyncio.get_running_loop()
    keepalive_at = loop.time() + keepalive_s
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        update = await subscription.next(min(GONE_CHECK_S, keepalive_s))
        if update is None and loop.time() < keepalive_at:
            continue
        keepalive_at = loop.time() + keepalive_s
        yield update
        if update is not None and update.final and subscription.job_id is not None:
            return


async def _server_sent_events(request: web.Request, subscription: Subscription,
                              keepalive_s: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        # nginx passes each event on at once instead of buffering the stream.
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    sequence = 0

    async def send(data: bytes) -> None:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(data)

    try:
        await send(f"retry: {SSE_RETRY_MS}\n\n".encode())
        async for update in _updates(request, subscription, keepalive_s):
            if update is None:
                await send(b": keep-alive\n\n")
                continue
            sequence += 1
            body = orjson.dumps(await event_body(request, update), default=str)
            await send(b"id: %d\nevent: %s\ndata: %s\n\n"
                       % (sequence, event_type(update).encode(), body))
    except (SlowSubscriber, TimeoutError):
        log.info("event stream dropped: the client fell behind",
                 extra={"job_id": subscription.job_id, "tenant": subscription.tenant})
    except (ConnectionResetError, HubClosed):
        pass
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _websocket(request: web.Request, subscription: Subscription,
                     keepalive_s: float) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=(WEBSOCKET_PROTOCOL,), heartbeat=keepalive_s,
                               max_msg_size=4096)
    await ws.prepare(request)
    # Read what the client sends (close frames, pongs); it has nothing else to say.
    reader = asyncio.create_task(_drain_incoming(ws))
    try:
        async for update in _updates(request, subscription, keepalive_s):
            if ws.closed:
                break
            if update is None:  # aiohttp's heartbeat pings an idle WebSocket
                continue
            body = orjson.dumps(await event_body(request, update), default=str).decode()
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await ws.send_str(body)
        await ws.close()
    except (SlowSubscriber, TimeoutError):
        log.info("event stream dropped: the client fell behind",
                 extra={"job_id": subscription.job_id, "tenant": subscription.tenant})
        await ws.close(code=WS_TRY_AGAIN_LATER, message=b"fell behind; reconnect")
    except HubClosed:
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down; reconnect")
    except ConnectionResetError:
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return ws


async def _drain_incoming(ws: web.WebSocketResponse) -> None:
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            return

