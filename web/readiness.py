"""Readiness: do PostgreSQL, Redis and Kafka answer? Checked at most once per interval.

``/readyz`` is open to anyone who can reach the port, and each check is a round trip to
three services: unthrottled, a flood of probes would become a flood of queries. One check
serves every probe for ``ttl_s`` seconds, and probes arriving during a check wait for it
instead of starting their own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
"""A service slower than this to answer counts as unavailable."""


class Service(enum.StrEnum):
    """What readiness checks, as named in the ``/readyz`` answer."""

    POSTGRESQL = "postgresql"
    REDIS = "redis"
    KAFKA = "kafka"


OK = "ok"


@dataclass(frozen=True, slots=True)
class Readiness:
    """One check's result: per service, ``ok`` or why not."""

    checks: dict[Service, str]
    checked_at: float
    """On the checker's clock."""

    @property
    def by_name(self) -> dict[str, str]:
        """The checks with plain string keys, for a JSON answer."""
        return {service.value: result for service, result in self.checks.items()}

    @property
    def ready(self) -> bool:
        """Every service answered."""
        return all(v == OK for v in self.checks.values())


Probe = Callable[[], Awaitable[dict[Service, str]]]


class CachedReadiness:
    """The latest readiness, re-checked once it is ``ttl_s`` old (0: on every call)."""

    def __init__(self, probe: Probe, *, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._ttl_s = ttl_s
        self._clock = clock
        self._last: Readiness | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> Readiness | None:
        last = self._last
        if last is not None and self._clock() - last.checked_at < self._ttl_s:
            return last
        return None

    async def get(self) -> Readiness:
        """The cached result while fresh; else one new check shared by concurrent callers."""
        if (fresh := self._fresh()) is not None:
            return fresh
        async with self._lock:
            if (fresh := self._fresh()) is not None:
                return fresh  # checked while we waited
            checks = await self._probe()
            self._last = Readiness(checks, self._clock())
            if not self._last.ready:
                log.warning("not ready", extra={"checks": self._last.by_name})
            return self._last

    def age_s(self, readiness: Readiness) -> float:
        """How long ago ``readiness`` was checked."""
        return max(0.0, self._clock() - readiness.checked_at)


async def _check(probe: Awaitable[Any]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
        return OK
    except Exception as e:  # noqa: BLE001 - any failure means "not ready"
        return f"unavailable: {type(e).__name__}"


def service_probe(pool: asyncpg.Pool, client: redis.Redis, producer: AIOKafkaProducer) -> Probe:
    """Check the three services concurrently, each bounded by CHECK_TIMEOUT_S."""

    async def probe() -> dict[Service, str]:
        results = await asyncio.gather(
            _check(pool.fetchval("SELECT 1")),
            _check(client.ping()),
            # A metadata request, not the producer's cache: it fails when the broker is down.
            _check(producer.client.fetch_all_metadata()),
        )
        return dict(zip((Service.POSTGRESQL, Service.REDIS, Service.KAFKA), results, strict=True))

    return probe


readiness_key = web.AppKey("readiness", CachedReadiness)
