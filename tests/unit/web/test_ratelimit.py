"""Rate limits: RateLimit headers, bucket names, whole-submission charges, the in-process
buckets and when they replace Redis (the Redis buckets themselves are tested against real
Valkey in tests/integration)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions as redis_errors

from app import metrics
from app.settings import Settings
from web.access import parse_policy
from web.auth import Principal
from web.ratelimit import (
    Bucket,
    Decision,
    FallbackReason,
    LocalBuckets,
    RateLimiter,
    Resource,
    Scope,
    bucket_key,
    over_burst,
    rate_limit_headers,
)
from web.security import Guard


def test_refused_decision_has_retry_after_and_ratelimit_headers() -> None:
    headers = rate_limit_headers(Decision(False, 100, 0, 2.3, "records:x"))
    assert headers == {"RateLimit-Limit": "100", "RateLimit-Remaining": "0",
                       "RateLimit-Reset": "3", "Retry-After": "3"}


def test_retry_after_is_at_least_one_second() -> None:
    assert rate_limit_headers(Decision(False, 5, 0, 0.001, "r"))["Retry-After"] == "1"
    assert "Retry-After" not in rate_limit_headers(Decision(True, 5, 4, 0, "r"))


def test_bucket_names_cannot_collide_across_tenants_and_subjects() -> None:
    assert bucket_key(Resource.RECORDS) == "records"
    assert bucket_key(Resource.REQUESTS, "acme") == "requests:t:acme"
    assert bucket_key(Resource.REQUESTS, "a:b", "c") != bucket_key(Resource.REQUESTS, "a", "b:c")
    assert bucket_key(Resource.REQUESTS, "a", "b") != bucket_key(Resource.REQUESTS, "b", "a")


def test_a_charge_over_a_burst_is_found() -> None:
    small, big = Bucket("p", 1, 10, Scope.PRINCIPAL), Bucket("s", 1, 100)
    assert over_burst([(big, 15), (small, 15)]) == (small, 15)
    assert over_burst([(big, 10), (small, 10)]) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_buckets_debit_all_or_nothing_and_refill() -> None:
    clock = Clock()
    local = LocalBuckets(clock)
    wide, narrow = Bucket("wide", 100, 100), Bucket("narrow", 1, 3)
    decisions = [local.take([(wide, 1), (narrow, 1)]) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert (decisions[2].bucket, decisions[2].remaining, decisions[2].limit) == ("narrow", 0, 3)
    refused = decisions[3]
    assert (refused.bucket, refused.retry_after_s, refused.limit) == ("narrow", 1.0, 3)
    # the refusal took nothing from the wide bucket: 97 left, not 96
    assert local.take([(wide, 97)]).allowed
    clock.now += 1
    assert local.take([(narrow, 1)]).allowed
    assert not local.take([(narrow, 1)]).allowed


def test_local_buckets_never_admit_more_than_the_burst() -> None:
    local = LocalBuckets(Clock())
    decision = local.take([(Bucket("b", 1, 10), 11)])
    assert not decision.allowed


def test_local_buckets_forget_refilled_buckets() -> None:
    clock = Clock()
    local = LocalBuckets(clock)
    for i in range(100):
        local.take([(Bucket(f"p{i}", 10, 10), 5)])
    assert len(local) == 100
    clock.now += 120
    local.take([(Bucket("new", 10, 10), 1)])
    assert len(local) == 1


class Script:
    """Stands in for the registered Lua script: raises what it is given, else allows."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.calls = 0

    async def __call__(self, keys: list[str], args: list[Any]) -> list[int]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return [1, 1, 0, 99, 100]


class Client:
    def __init__(self, script: Script) -> None:
        self.script = script

    def register_script(self, _: str) -> Callable[..., Awaitable[list[int]]]:
        return self.script


def _fallbacks(reason: FallbackReason) -> float:
    return float(metrics.rate_limit_fallback.labels(reason.value)._value.get())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("error", "reason"), [
    (redis_errors.ConnectionError("refused"), FallbackReason.UNREACHABLE),
    (redis_errors.TimeoutError("slow"), FallbackReason.UNREACHABLE),
    (ConnectionResetError(), FallbackReason.UNREACHABLE),
    (redis_errors.OutOfMemoryError("OOM command not allowed"), FallbackReason.ERROR),
    (redis_errors.ClusterDownError("CLUSTERDOWN"), FallbackReason.ERROR),
    (redis_errors.ResponseError("ERR Error running script"), FallbackReason.ERROR),
    (redis_errors.ReadOnlyError("READONLY"), FallbackReason.ERROR),
])
async def test_no_redis_failure_lifts_the_limits(error: BaseException, reason: FallbackReason) -> None:
    script, clock = Script(), Clock()
    limiter = RateLimiter(Client(script), clock=clock)  # type: ignore[arg-type]
    script.error = error
    before = _fallbacks(reason)
    bucket = Bucket("p", 0.01, 2)
    assert [(await limiter.take([(bucket, 1)])).allowed for _ in range(3)] == [True, True, False]
    assert limiter.degraded is reason
    assert _fallbacks(reason) == before + 3


async def test_after_a_connection_error_redis_is_asked_again_after_the_retry_interval() -> None:
    script, clock = Script(), Clock()
    limiter = RateLimiter(Client(script), retry_s=1.0, clock=clock)  # type: ignore[arg-type]
    script.error = redis_errors.ConnectionError("refused")
    bucket = Bucket("p", 1, 5)
    await limiter.take([(bucket, 1)])
    await limiter.take([(bucket, 1)])
    assert script.calls == 1  # not one connection attempt per request while it is down
    script.error = None
    clock.now += 1.0
    decision = await limiter.take([(bucket, 1)])
    assert script.calls == 2 and decision.remaining == 99 and limiter.degraded is None


async def test_an_error_answer_is_retried_on_the_next_request() -> None:
    script, clock = Script(), Clock()
    limiter = RateLimiter(Client(script), clock=clock)  # type: ignore[arg-type]
    script.error = redis_errors.OutOfMemoryError("OOM")
    await limiter.take([(Bucket("p", 1, 5), 1)])
    script.error = None
    await limiter.take([(Bucket("p", 1, 5), 1)])
    assert script.calls == 2 and limiter.degraded is None


def test_each_request_and_submission_is_charged_to_service_tenant_and_principal(tmp_path: Path) -> None:
    policy = parse_policy({
        "all_tenants": {"subjects": {"svc": {"limits": {"records_burst": 10}}}},
        "tenants": {"acme": {"limits": {"requests_burst": 4}}},
    })
    guard = Guard(None, None, policy, Settings())  # type: ignore[arg-type]
    acme = Principal("svc", "acme", frozenset(), frozenset())
    requests = guard.request_charges(acme)
    assert [(b.key, b.scope, b.burst, cost) for b, cost in requests] == [
        ("requests", Scope.SERVICE, 10_000, 1),
        ("requests:t:acme", Scope.TENANT, 4, 1),
        ("requests:p:acme:svc", Scope.PRINCIPAL, 5000, 1),
    ]
    records = guard.record_charges(acme, 15)
    assert [cost for _, cost in records] == [15, 15, 15]  # the whole submission, everywhere
    assert over_burst(records) == (records[2][0], 15)
    other = guard.record_charges(Principal("svc", "globex", frozenset(), frozenset()), 1)
    assert other[1][0].key == "records:t:globex" and other[1][0].burst == 10_000_000
