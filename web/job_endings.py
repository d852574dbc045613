"""`Prefer: wait=N` (RFC 7240): the submitter waits for its job's end, up to N seconds.

A job's end is committed with its report in the outbox, which notifies
``JOB_ENDED_CHANNEL`` (app/store/reports.py); this web process LISTENs and wakes the
requests waiting for that job, which then read it. The notification is a shortcut only:
each waiter also looks every LOOK_S, so a lost LISTEN connection costs latency, never an
answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import asyncpg
from aiohttp import web

from app.store import jobs
from app.store.listener import ChannelListener
from app.store.reports import JOB_ENDED_CHANNEL
from schemas.vocabulary import TERMINAL_STATES

LOOK_S = 1.0
"""How often a waiter reads its job without being woken."""
ANSWER_MARGIN_S = 0.5
"""Kept from the preferred wait for reading the job and its results and writing the
answer, so that the answer leaves within the wait the client asked for."""
_WAIT = re.compile(r"(?:^|[;,])\s*wait\s*=\s*\"?(\d{1,6})\"?\s*(?:$|[;,])", re.IGNORECASE)


def preferred_wait_s(prefer: str | None, cap_s: float) -> float | None:
    """The ``wait`` preference of a Prefer header, capped; None when there is none.

    RFC 7240: preferences are hints, so an unreadable one is ignored, never an error.
    """
    if not prefer:
        return None
    for header in prefer.split(","):
        found = _WAIT.search(header.strip())
        if found:
            return min(float(found.group(1)), cap_s)
    return None


def time_left_s(wait_s: float, arrived: float, now: float) -> float:
    """What is left of a ``wait_s`` preference at ``now`` for a request that ``arrived``
    (loop times): RFC 7240 asks for an answer within the wait counted from the request,
    so the time its body took to arrive is spent already. 0 when nothing is left."""
    return max(0.0, wait_s - (now - arrived) - ANSWER_MARGIN_S)


class JobEndings:
    """Wakes the requests waiting for a job when it ends."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._listener = ChannelListener(dsn, JOB_ENDED_CHANNEL, self._ended,
                                         on_connected=self._wake_all)

    def start(self) -> None:
        self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def _ended(self, job_id: str) -> None:
        for event in self._waiting.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        """At each (re)connection: an end notified while not listening was lost."""
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def wait(self, job_id: str, tenant: str, timeout_s: float) -> dict[str, Any] | None:
        """The job once it has ended, or None if it has not within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        woken = asyncio.Event()
        self._waiting.setdefault(job_id, set()).add(woken)
        try:
            while True:
                woken.clear()  # before the read: an end notified after it wakes the wait
                job = await jobs.get_for_tenant(self._pool, job_id, tenant)
                if job is not None and job["state"] in TERMINAL_STATES:
                    return job
                remaining = until - loop.time()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, LOOK_S))
        finally:
            events = self._waiting[job_id]
            events.discard(woken)
            if not events:
                del self._waiting[job_id]


job_endings_key = web.AppKey("job_endings", JobEndings)
