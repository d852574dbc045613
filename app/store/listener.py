"""A LISTEN on one PostgreSQL channel, on a connection of its own, kept up with backoff.

Notifications here are shortcuts only (a waiter wakes now rather than at its next look):
a lost connection, or a pooler that does not pass LISTEN, costs latency, never
correctness. ``on_connected`` runs at each (re)connection, since notifications sent
while not listening are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 30.0


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


class ChannelListener:
    """Calls ``on_payload`` with each notification's payload on ``channel``."""

    def __init__(self, dsn: str, channel: str, on_payload: Callable[[str], None],
                 on_connected: Callable[[], None] = lambda: None) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_payload = on_payload
        self._on_connected = on_connected
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, connection: object, pid: int, channel: str, payload: object) -> None:
        self._on_payload(str(payload))

    async def _run(self) -> None:
        delay = 0.5
        where = {"channel": self._channel}
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("listener cannot connect; waiters look on their timers",
                            extra={**where, "error": type(e).__name__, "retry_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(self._channel, self._notified)
                delay = 0.5
                self._on_connected()
                await lost.wait()
                log.warning("listener connection lost; reconnecting", extra=where)
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("listener failed", extra={**where, "error": type(e).__name__})
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
