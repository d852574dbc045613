"""Live job events: each web process reads the jobs someone watches, a few times a second,
and hands every change to the watchers' bounded buffers.

One reader per process, whatever the number of watchers: a tick is one primary-key read of
the jobs being followed and, for tenant-wide watchers, one index range read of the jobs
their tenants created since the last tick (``sluice_jobs_by_tenant``); nothing is added to
the workers' write path. A change is a new state, new counts, a new reason or a stall mark;
a watcher gets at most one update per job per tick, so a busy job costs its watchers a
few updates a second, however many chunks the workers commit.

A watcher that does not keep up is dropped, never waited for: its buffer holds
``buffer`` updates, and the one that does not fit ends its subscription (SlowSubscriber).
Reconnecting gives the current state at once, so nothing is lost by a drop but the steps
in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from app import metrics
from app.store import jobs
from schemas.vocabulary import TERMINAL_STATES, JobState
from web.problems import Problem, ProblemType

log = logging.getLogger(__name__)

DISCOVERY_SLACK = timedelta(seconds=5)
"""How far before the last tick a tenant's new jobs are looked for: a job is created in a
short transaction whose ``created_at`` is its start, committed a moment later."""
_ERROR_BACKOFF_MAX_S = 5.0
_CHANGES = ("state", "records_received", "succeeded", "failed", "duplicates", "aborted",
            "reason", "stalled_since")
"""What makes a job's row worth an update (``updated_at`` alone does not)."""


class UnknownJob(Exception):
    """No such job for this tenant (another tenant's job is as unknown as an id never issued)."""


class SlowSubscriber(Exception):
    """The watcher fell ``buffer`` updates behind and was dropped."""


class HubClosed(Exception):
    """The web process is shutting down: every stream ends (clients reconnect elsewhere)."""


class _End(enum.Enum):
    DROPPED = "dropped"
    CLOSED = "closed"


@dataclass(frozen=True)
class JobUpdate:
    """A job's row (``sluice_jobs``' columns) after a change; ``final`` once it has ended."""

    job: dict[str, Any]
    final: bool


def _signature(job: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(job.get(name) for name in _CHANGES)


def _visible(job: dict[str, Any]) -> bool:
    """A job still receiving is nobody's to see yet (GET answers 404 for it too)."""
    return bool(job["state"] != JobState.RECEIVING)


@dataclass(eq=False)
class Subscription:
    """One watcher's bounded buffer of updates: of one job (ends after its final update)
    or of every job of a tenant (never ends by itself)."""

    tenant: str
    job_id: str | None
    buffer: int
    _queue: asyncio.Queue[JobUpdate | _End] = field(init=False)
    _sent: dict[str, tuple[Any, ...]] = field(default_factory=dict, init=False)
    _ended: dict[str, datetime] = field(default_factory=dict, init=False)
    """Ended jobs' creation times: their last update is kept (so that a job found again
    by the discovery read is not reported twice) until it is older than that read."""
    dropped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # Two slots more than the buffer: the end markers (dropped, closed).
        self._queue = asyncio.Queue(self.buffer + 2)

    def offer(self, job: dict[str, Any]) -> None:
        """Queue ``job`` if it changed since this watcher's last update of it."""
        if self.dropped or not _visible(job):
            return
        signature = _signature(job)
        if self._sent.get(job["job_id"]) == signature:
            return
        if self._queue.qsize() >= self.buffer:
            self.dropped = True
            self._queue.put_nowait(_End.DROPPED)
            metrics.event_watchers_dropped.inc()
            return
        final = job["state"] in TERMINAL_STATES
        self._sent[job["job_id"]] = signature
        if final and self.job_id is None:
            self._ended[job["job_id"]] = job["created_at"]
        self._queue.put_nowait(JobUpdate(job, final))

    def forget_ended_before(self, created_at: datetime) -> None:
        """Drop what is kept of ended jobs created before ``created_at``: no read finds them again."""
        for job_id in [j for j, created in self._ended.items() if created < created_at]:
            del self._ended[job_id]
            self._sent.pop(job_id, None)

    async def next(self, timeout_s: float) -> JobUpdate | None:
        """The next update, or None if none came within ``timeout_s``; SlowSubscriber
        once dropped."""
        try:
            update = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        return self._opened(update)

    def _opened(self, update: JobUpdate | _End) -> JobUpdate:
        if update is _End.DROPPED:
            raise SlowSubscriber(f"more than {self.buffer} updates behind")
        if update is _End.CLOSED:
            raise HubClosed()
        return update

    def close(self) -> None:
        """End the stream (HubClosed at its reader) after the updates already queued."""
        if not self.dropped:
            self._queue.put_nowait(_End.CLOSED)

    def __aiter__(self) -> AsyncIterator[JobUpdate]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[JobUpdate]:
        while True:
            update = self._opened(await self._queue.get())
            yield update
            if update.final and self.job_id is not None:
                return


class JobEventHub:
    """The process's one reader of watched jobs; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, *, tick_s: float, buffer: int,
                 receiving_window_s: float, max_watchers: int) -> None:
        self._pool = pool
        self._max_watchers = max_watchers
        self._tick_s = tick_s
        self._buffer = buffer
        self._receiving_window = timedelta(seconds=receiving_window_s)
        self._by_job: dict[str, set[Subscription]] = {}
        self._by_tenant: dict[str, set[Subscription]] = {}
        self._followed: dict[str, set[str]] = {}
        """Per tenant watched as a whole: its jobs not yet ended (receiving ones included,
        so that a job that ends within a tick of its seal is still seen)."""
        self._since: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def job(self, job_id: str, tenant: str) -> AsyncIterator[Subscription]:
        """Updates of one job, its current state first; UnknownJob if it is not the tenant's."""
        self._check_room()
        job = await jobs.get_for_tenant(self._pool, job_id, tenant)
        if job is None or not _visible(job):
            raise UnknownJob(job_id)
        subscription = Subscription(tenant, job_id, self._buffer)
        subscription.offer(job)
        self._by_job.setdefault(job_id, set()).add(subscription)
        try:
            self._ensure_running()
            yield subscription
        finally:
            self._discard(self._by_job, job_id, subscription)

    @contextlib.asynccontextmanager
    async def tenant(self, tenant: str) -> AsyncIterator[Subscription]:
        """Updates of every job of a tenant, its unfinished jobs' current state first."""
        self._check_room()
        subscription = Subscription(tenant, None, self._buffer)
        for job in await jobs.unfinished_for_tenant(self._pool, tenant, self._receiving_window):
            subscription.offer(job)
            if job["state"] not in TERMINAL_STATES:
                self._followed.setdefault(tenant, set()).add(job["job_id"])
        self._by_tenant.setdefault(tenant, set()).add(subscription)
        try:
            self._ensure_running()
            yield subscription
        finally:
            self._discard(self._by_tenant, tenant, subscription)
            if tenant not in self._by_tenant:
                self._followed.pop(tenant, None)

    def _check_room(self) -> None:
        """503 past ``max_watchers``: each stream holds a connection and a buffer."""
        if self.watchers >= self._max_watchers:
            raise Problem(503, "Too many event streams",
                          "this web process holds as many event streams as it may; retry shortly",
                          slug=ProblemType.TOO_MANY_WATCHERS, headers={"Retry-After": "5"})

    def _discard(self, index: dict[str, set[Subscription]], key: str,
                 subscription: Subscription) -> None:
        members = index.get(key)
        if members is not None:
            members.discard(subscription)
            if not members:
                del index[key]
        metrics.event_watchers.set(self.watchers)

    @property
    def watchers(self) -> int:
        return sum(map(len, self._by_job.values())) + sum(map(len, self._by_tenant.values()))

    def _ensure_running(self) -> None:
        metrics.event_watchers.set(self.watchers)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="job-events")

    def close_all(self) -> None:
        """At shutdown: end every stream, so that none holds the process up."""
        for index in (self._by_job, self._by_tenant):
            for subscriptions in index.values():
                for subscription in subscriptions:
                    subscription.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        """Tick while anybody watches; a database error is logged and the tick retried
        later (watchers stay connected and see the next change)."""
        backoff = self._tick_s
        while self._by_job or self._by_tenant:
            try:
                await self.tick()
                backoff = self._tick_s
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("job events not read; retrying",
                            extra={"error": type(e).__name__, "retry_s": backoff})
                backoff = min(backoff * 2, _ERROR_BACKOFF_MAX_S)
            await asyncio.sleep(backoff)
        self._since = None

    async def tick(self) -> None:
        """Read the followed jobs and the watched tenants' new ones; offer each change."""
        followed = set(self._by_job).union(*self._followed.values())
        tenants = sorted(self._by_tenant)
        now, rows = await jobs.changes_for_watchers(
            self._pool, sorted(followed), tenants,
            None if self._since is None else self._since - DISCOVERY_SLACK)
        self._since = now
        for job in rows:
            self._dispatch(job)
        for watchers in self._by_tenant.values():
            for subscription in watchers:
                subscription.forget_ended_before(now - 2 * DISCOVERY_SLACK)

    def _dispatch(self, job: dict[str, Any]) -> None:
        job_id, tenant = job["job_id"], job["tenant"]
        ended = job["state"] in TERMINAL_STATES
        for subscription in self._by_job.get(job_id, ()):
            subscription.offer(job)
        watchers = self._by_tenant.get(tenant, ())
        for subscription in watchers:
            subscription.offer(job)
        if watchers:
            followed = self._followed.setdefault(tenant, set())
            if ended:
                followed.discard(job_id)
            else:
                followed.add(job_id)


job_events_key = web.AppKey("job_events", JobEventHub)
