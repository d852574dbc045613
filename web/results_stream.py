"""Writing a job's results listing to its client, a page at a time.

A listing can be far larger than the socket buffers, so its writer ends up waiting on its
client. It waits holding no database connection (each page is read and its connection
released before the page is written) and not for ever (each write has a send timeout,
after which the connection is dropped): a client that stops reading costs a socket and
one page of memory for a bounded time, and nothing anyone else needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from enum import StrEnum
from typing import Any

import orjson
from aiohttp import web

from schemas.outcomes import Outcome

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-ndjson"


class StreamEnd(StrEnum):
    """How a results listing ended (logged)."""

    COMPLETE = "complete"
    CLIENT_TOO_SLOW = "client_too_slow"
    """One page was not taken within the send timeout: the client is not reading."""
    CLIENT_GONE = "client_gone"
    STORE_FAILED = "store_failed"
    """A page could not be read after the first was sent: too late for an error answer."""


class _Cut(Exception):
    def __init__(self, end: StreamEnd) -> None:
        super().__init__(end)
        self.end = end


def render_page(page: Sequence[Outcome]) -> bytes:
    """NDJSON lines for a page of outcomes: index, status, key (as stored JSON), code and
    message for a record that has them, and for a failed record its ``record`` as received
    (schemas.received), with ``record_truncated`` when it was cut. Outcomes written before
    records were kept have none: their lines have no ``record``."""
    lines: list[bytes] = []
    for o in page:
        line: dict[str, Any] = {"index": o.index, "status": o.status,
                                "key": orjson.Fragment(o.key) if o.key else None}
        if o.code is not None:
            line["code"] = o.code
            line["message"] = o.message
        if o.record is not None:
            line["record"] = o.record
            if o.record_truncated:
                line["record_truncated"] = True
        lines.append(orjson.dumps(line))
    return b"\n".join(lines) + b"\n"


async def _send(response: web.StreamResponse, data: bytes | None, timeout_s: float) -> None:
    """Write ``data`` (None: end the body), waiting on the client at most ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            if data is None:
                await response.write_eof()
            else:
                await response.write(data)
    except TimeoutError:
        raise _Cut(StreamEnd.CLIENT_TOO_SLOW) from None
    except ConnectionError:
        raise _Cut(StreamEnd.CLIENT_GONE) from None


async def stream_results(
    request: web.Request, pages: AsyncIterator[Sequence[Outcome]], *,
    job_id: str, send_timeout_s: float,
) -> web.StreamResponse:
    """Answer 200 with every page of ``pages`` as NDJSON.

    The first page is read before anything is sent, so a store that is down is still
    answered with a problem (raised from here). Once the body has begun, a failure can
    only end it: the connection is dropped without the final chunk, which tells the
    client its listing is incomplete.
    """
    page = await anext(pages, None)
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
    await response.prepare(request)
    sent = 0
    try:
        while page is not None:
            await _send(response, render_page(page), send_timeout_s)
            sent += len(page)
            try:
                page = await anext(pages, None)
            except Exception as e:  # noqa: BLE001 - whatever it is, the answer has begun
                log.error("results listing cut: store failed", extra={
                    "job_id": job_id, "end": StreamEnd.STORE_FAILED, "lines_sent": sent,
                    "error": type(e).__name__})
                raise _Cut(StreamEnd.STORE_FAILED) from e
        await _send(response, None, send_timeout_s)
    except _Cut as cut:
        if cut.end is StreamEnd.CLIENT_TOO_SLOW:
            log.warning("results listing cut: client not reading", extra={
                "job_id": job_id, "end": cut.end, "lines_sent": sent,
                "send_timeout_s": send_timeout_s})
        # Abort, not close: a close would wait for the unread bytes to be delivered.
        if request.transport is not None:
            request.transport.abort()
    return response
