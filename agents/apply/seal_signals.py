"""Wakes the apply loops when a job is sealed or failed, instead of at their next look.

A job's envelopes usually reach the worker a moment before the web process seals the
job, so they wait; before, they waited for the partition's next look (SLUICE_FLUSH_INTERVAL_S),
which was most of a small job's time from POST to its end. The job store now notifies
``JOB_SETTLED_CHANNEL`` when a receiving job is sealed or failed, and this listener wakes
every partition that holds envelopes back. It is a shortcut only: a lost connection (or a
pooler that does not pass LISTEN) leaves the partitions' own timer, and the listener
reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from app.store.jobs import JOB_SETTLED_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 30.0


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


class SealListener:
    """LISTENs on its own connection; calls ``wake`` on each notification."""

    def __init__(self, dsn: str, wake: Callable[[], None]) -> None:
        self._dsn = dsn
        self._wake = wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="seal-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, *_: object) -> None:
        self._wake()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("seal listener cannot connect; partitions look on their timer",
                            extra={"error": type(e).__name__, "retry_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(JOB_SETTLED_CHANNEL, self._notified)
                delay = 0.5
                self._wake()  # a seal may have come while not listening
                await lost.wait()
                log.warning("seal listener connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("seal listener failed", extra={"error": type(e).__name__})
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
