"""Admission control: bounded concurrent uploads and backpressure from the queue behind us.

A submission that cannot be served well is refused at once with 503 and Retry-After,
before its body is read: the queue never grows without bound, and accepted work drains.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from web.problems import Problem


@dataclass(frozen=True, slots=True)
class Backlog:
    """What is queued behind the ingress."""

    records: int
    """Records accepted but without an outcome yet."""
    oldest_age_s: float
    """Age of the oldest accepted job that has not finished."""


def backpressure_problem(backlog: Backlog, max_records: int, retry_after_s: int) -> Problem | None:
    """The 503 to answer when too many records wait to be written, else None.

    Only the depth counts: one old job (stuck, or simply large) says nothing about
    whether the pipeline can take more, and must not turn every client away.
    """
    if backlog.records > max_records:
        reason = f"{backlog.records} records are waiting to be written (limit {max_records})"
    else:
        return None
    return Problem(503, "Backpressure", f"not accepting new work: {reason}",
                   slug="backpressure", headers={"Retry-After": str(retry_after_s)})


class Admission:
    """Counts uploads in progress and looks at the backlog, cached for a second."""

    def __init__(
        self,
        *,
        max_streams: int,
        max_queue_records: int,
        read_backlog: Callable[[], Awaitable[Backlog]],
        refresh_s: float = 1.0,
    ) -> None:
        self.max_streams = max_streams
        self.active = 0
        self._max_records = max_queue_records
        self._read_backlog = read_backlog
        self._refresh_s = refresh_s
        self._backlog: Backlog | None = None
        self._read_at = 0.0

    async def backlog(self) -> Backlog:
        """The backlog, read at most once per refresh interval."""
        now = time.monotonic()
        if self._backlog is None or now - self._read_at >= self._refresh_s:
            self._backlog = await self._read_backlog()
            self._read_at = now
        return self._backlog

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one upload slot for the duration of a submission, or refuse it."""
        if self.active >= self.max_streams:
            raise Problem(503, "Too many uploads",
                          f"{self.max_streams} uploads are already in progress",
                          slug="too-many-uploads", headers={"Retry-After": "1"})
        self.active += 1
        try:
            problem = backpressure_problem(
                await self.backlog(), self._max_records, retry_after_s=5
            )
            if problem is not None:
                raise problem
            yield
        finally:
            self.active -= 1
