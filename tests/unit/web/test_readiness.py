"""Readiness is checked at most once per interval, and concurrent probes share one check."""

from __future__ import annotations

import asyncio

from web.readiness import OK, CachedReadiness, Probe, Service


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _probe(results: list[dict[Service, str]]) -> tuple[list[int], Probe]:
    calls = [0]

    async def probe() -> dict[Service, str]:
        calls[0] += 1
        await asyncio.sleep(0.01)
        return results[min(calls[0], len(results)) - 1]

    return calls, probe


ALL_OK = {Service.POSTGRESQL: OK, Service.REDIS: OK, Service.KAFKA: OK}
REDIS_DOWN = {**ALL_OK, Service.REDIS: "unavailable: ConnectionError"}


async def test_one_check_serves_every_probe_for_the_interval() -> None:
    clock = Clock()
    calls, probe = _probe([ALL_OK, REDIS_DOWN])
    cached = CachedReadiness(probe, ttl_s=2, clock=clock)
    answers = await asyncio.gather(*(cached.get() for _ in range(50)))
    assert calls == [1] and all(a.ready for a in answers)
    clock.now += 1.5
    assert (await cached.get()).ready and calls == [1]
    assert cached.age_s(await cached.get()) == 1.5
    clock.now += 0.5
    again = await cached.get()
    assert calls == [2] and not again.ready
    assert again.checks[Service.REDIS].startswith("unavailable")


async def test_ttl_zero_checks_every_time() -> None:
    calls, probe = _probe([ALL_OK])
    cached = CachedReadiness(probe, ttl_s=0, clock=Clock())
    for _ in range(3):
        await cached.get()
    assert calls == [3]


async def test_queue_gauges_are_refreshed_from_the_backlog_in_the_background() -> None:
    from app import metrics
    from web.admission import Backlog
    from web.metrics_server import refresh_queue_gauges

    reads = 0
    third = asyncio.Event()

    async def read_backlog() -> Backlog:
        nonlocal reads
        reads += 1
        if reads == 2:
            raise OSError("database down")  # skipped, the refresher carries on
        if reads == 3:
            third.set()
        return Backlog(records=40 + reads, oldest_age_s=7.5)

    task = asyncio.create_task(refresh_queue_gauges(read_backlog, every_s=0.01))
    try:
        await asyncio.wait_for(third.wait(), 5)
        await asyncio.sleep(0)  # let the refresher set the gauges from the third read
    finally:
        task.cancel()
    assert metrics.queue_depth._value.get() == 43
    assert metrics.oldest_pending_age._value.get() == 7.5


def test_a_tenant_with_nothing_queued_leaves_the_per_tenant_gauge() -> None:
    from prometheus_client import REGISTRY

    from web.metrics_server import show_tenant_depths

    def depth(tenant: str) -> float | None:
        return REGISTRY.get_sample_value("sluice_tenant_queue_depth_records", {"tenant": tenant})

    shown = show_tenant_depths({"acme": 12, "": 3}, set())
    assert (depth("acme"), depth("-")) == (12, 3)
    shown = show_tenant_depths({"acme": 5}, shown)
    assert (depth("acme"), depth("-")) == (5, None)
    assert show_tenant_depths({}, shown) == set() and depth("acme") is None
