"""Admission control: bounded concurrent uploads and backpressure from the queue behind us,
for the whole service and for each tenant.

A submission that cannot be served well is refused at once, before its body is read: the
queue never grows without bound, and accepted work drains. Each tenant has a share of the
upload slots and of the queue, so that one tenant cannot take all of them and starve the
others: a tenant over its share gets ``429`` (its own excess), while ``503`` means the
service as a whole is full.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from app import metrics
from web.problems import Problem, Refusal

UPLOAD_RETRY_AFTER_S = 1
BACKLOG_RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class Backlog:
    """What is queued behind the ingress."""

    records: int
    """Records accepted but without an outcome yet."""
    oldest_age_s: float
    """Age of the oldest accepted job that has not finished."""
    by_tenant: Mapping[str, int] = field(default_factory=dict)
    """``records``, per tenant (tenants with nothing queued are absent)."""


@dataclass(frozen=True, slots=True)
class Shares:
    """Limits of the whole service and of each tenant."""

    max_streams: int
    max_tenant_streams: int
    max_queue_records: int
    max_tenant_queue_records: int


def _refuse(refusal: Refusal, detail: str) -> Problem:
    metrics.admission_refused.labels(refusal.value).inc()
    if refusal is Refusal.UPLOADS:
        return Problem(503, "Too many uploads", detail, slug=refusal,
                       headers={"Retry-After": str(UPLOAD_RETRY_AFTER_S)})
    if refusal is Refusal.TENANT_UPLOADS:
        return Problem(429, "Too many uploads for this tenant", detail, slug=refusal,
                       headers={"Retry-After": str(UPLOAD_RETRY_AFTER_S)})
    title = "Backpressure" if refusal is Refusal.BACKPRESSURE else "Backpressure for this tenant"
    return Problem(503 if refusal is Refusal.BACKPRESSURE else 429, title,
                   f"not accepting new work: {detail}", slug=refusal,
                   headers={"Retry-After": str(BACKLOG_RETRY_AFTER_S)})


def slot_problem(active: int, tenant_active: int, shares: Shares) -> Problem | None:
    """The refusal when no upload slot is free for this tenant, else None.

    A full service is said first (503: everyone waits); otherwise a tenant over its own
    share is told so (429: only its own uploads are in the way).
    """
    if active >= shares.max_streams:
        return _refuse(Refusal.UPLOADS, f"{shares.max_streams} uploads are already in progress")
    if tenant_active >= shares.max_tenant_streams:
        return _refuse(Refusal.TENANT_UPLOADS, f"this tenant already has {tenant_active} uploads in "
                       f"progress (limit {shares.max_tenant_streams})")
    return None


def backpressure_problem(backlog: Backlog, tenant: str, shares: Shares) -> Problem | None:
    """The refusal when too many records wait to be written, in all (503) or of this tenant
    (429), else None.

    Only the depth counts: one old job (stuck, or simply large) says nothing about
    whether the pipeline can take more, and must not turn every client away.
    """
    if backlog.records > shares.max_queue_records:
        return _refuse(Refusal.BACKPRESSURE, f"{backlog.records} records are waiting to be "
                       f"written (limit {shares.max_queue_records})")
    mine = backlog.by_tenant.get(tenant, 0)
    if mine > shares.max_tenant_queue_records:
        return _refuse(Refusal.TENANT_BACKPRESSURE, f"{mine} records of this tenant are waiting to "
                       f"be written (limit {shares.max_tenant_queue_records})")
    return None


class Slot:
    """One admitted upload; ``charge`` counts its records into the backlog at once."""

    def __init__(self, admission: Admission, tenant: str) -> None:
        self._admission = admission
        self.tenant = tenant

    def charge(self, records: int) -> None:
        """Count the submission's records as queued before the next backlog read sees them."""
        self._admission.note_queued(self.tenant, records)


class Admission:
    """Counts uploads in progress, in all and per tenant, and looks at the backlog, read from
    the job store at most once per refresh interval (plus what this process admitted since)."""

    def __init__(
        self,
        *,
        shares: Shares,
        read_backlog: Callable[[], Awaitable[Backlog]],
        refresh_s: float = 1.0,
    ) -> None:
        self.shares = shares
        self.active = 0
        self.active_by_tenant: dict[str, int] = {}
        self._read_backlog = read_backlog
        self._refresh_s = refresh_s
        self._backlog: Backlog | None = None
        self._read_at = 0.0
        self._since_read: dict[str, int] = {}

    async def backlog(self) -> Backlog:
        """The backlog last read, plus the records this process admitted since."""
        now = time.monotonic()
        if self._backlog is None or now - self._read_at >= self._refresh_s:
            self._since_read = {}
            self._backlog = await self._read_backlog()
            self._read_at = now
        if not self._since_read:
            return self._backlog
        by_tenant = dict(self._backlog.by_tenant)
        for tenant, records in self._since_read.items():
            by_tenant[tenant] = by_tenant.get(tenant, 0) + records
        return Backlog(self._backlog.records + sum(self._since_read.values()),
                       self._backlog.oldest_age_s, by_tenant)

    def note_queued(self, tenant: str, records: int) -> None:
        """Records just admitted: part of the backlog until the next read counts them."""
        self._since_read[tenant] = self._since_read.get(tenant, 0) + records

    @asynccontextmanager
    async def admit(self, tenant: str) -> AsyncIterator[Slot]:
        """Hold one upload slot (the service's and the tenant's) for the duration of a
        submission, or refuse it."""
        problem = slot_problem(self.active, self.active_by_tenant.get(tenant, 0), self.shares)
        if problem is not None:
            raise problem
        self.active += 1
        self.active_by_tenant[tenant] = self.active_by_tenant.get(tenant, 0) + 1
        try:
            problem = backpressure_problem(await self.backlog(), tenant, self.shares)
            if problem is not None:
                raise problem
            yield Slot(self, tenant)
        finally:
            self.active -= 1
            left = self.active_by_tenant[tenant] - 1
            if left:
                self.active_by_tenant[tenant] = left
            else:
                del self.active_by_tenant[tenant]
