"""Token buckets: in Redis, shared by every web process; in-process while Redis fails.

One Lua script checks and debits every bucket of a request atomically, so concurrent web
processes share the limits and a refused request takes nothing from any bucket. Time is
Redis's own clock, so web processes with skewed clocks agree.

A request is never let through unlimited. When Redis cannot be reached (connection
refused or reset, timeout), the limiter switches to token buckets of its own, in this
process, with the same rates and bursts, and asks Redis again after ``retry_s``: a Redis
outage neither becomes a full outage nor lifts the limits (each web process then allows
the configured rates on its own). When Redis answers with an error (out of memory, a
cluster or script error), the request is checked against the in-process buckets as well:
that is not an outage but a fault that needs an operator, so it is logged as an error;
refusing every request would turn a full Redis into a full outage.
Both cases are counted in ``sluice_rate_limit_fallback_total{reason}``.

A charge above a bucket's burst never fits: callers refuse such a submission outright
(``over_burst``) instead of debiting only the burst.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote

import redis.asyncio as redis
import redis.exceptions as redis_errors

from app import metrics

log = logging.getLogger(__name__)

KEY_PREFIX = "sluice:ratelimit:"
RETRY_REDIS_S = 1.0
"""After a connection error, how long the in-process buckets are used before Redis is tried again."""
PRUNE_EVERY_S = 60.0

# KEYS: bucket keys. ARGV: rate, burst, cost for each bucket in turn.
# Returns {allowed, index of the limiting bucket (1-based), retry-after ms, remaining, burst}.
# A cost above a burst never fits (its wait is reported, and callers refuse it before).
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = {}
local worst, worst_wait, tightest, tightest_left = 0, 0, 1, math.huge
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil or ts == nil then level, ts = burst, now end
  level = math.min(burst, level + math.max(0, now - ts) * rate)
  tokens[i] = level
  if cost > level then
    local wait = (cost - level) / rate
    if wait > worst_wait then worst, worst_wait = i, wait end
  elseif (level - cost) / burst < tightest_left then
    tightest, tightest_left = i, (level - cost) / burst
  end
end
if worst > 0 then
  return {0, worst, math.ceil(worst_wait * 1000), math.floor(tokens[worst]),
          tonumber(ARGV[3 * worst - 1])}
end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - tonumber(ARGV[3 * i])), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
local b = tightest
local left = tokens[b] - tonumber(ARGV[3 * b])
return {1, b, 0, math.floor(left), tonumber(ARGV[3 * b - 1])}
"""


class Resource(StrEnum):
    """What a bucket counts."""

    REQUESTS = "requests"
    RECORDS = "records"


class Scope(StrEnum):
    """Whose a bucket is."""

    SERVICE = "service"
    TENANT = "tenant"
    PRINCIPAL = "principal"


class FallbackReason(StrEnum):
    """Why the in-process buckets were used (the label of the fallback counter)."""

    UNREACHABLE = "unreachable"
    ERROR = "error"


CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError,
)
"""Redis could not be reached: an outage, waited out on the in-process buckets."""


def bucket_key(resource: Resource, tenant: str | None = None, subject: str | None = None) -> str:
    """The bucket's name: ``records``, ``records:t:<tenant>``, ``records:p:<tenant>:<sub>``.

    Tenant and subject are percent-encoded, so that no pair of names (``a:b`` + ``c``
    against ``a`` + ``b:c``) can share a bucket.
    """
    if tenant is None:
        return resource.value
    if subject is None:
        return f"{resource}:t:{quote(tenant, safe='')}"
    return f"{resource}:p:{quote(tenant, safe='')}:{quote(subject, safe='')}"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket: refills at ``rate`` per second up to ``burst``."""

    key: str
    rate: float
    burst: int
    scope: Scope = Scope.SERVICE


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check, with what the RateLimit headers report."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    bucket: str


Charges = Sequence[tuple[Bucket, int]]


def over_burst(charges: Charges) -> tuple[Bucket, int] | None:
    """The charge that exceeds its bucket's burst (it could never be paid), if any."""
    return next(((b, cost) for b, cost in charges if cost > b.burst), None)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """``RateLimit-Limit``/``-Remaining``/``-Reset`` (draft-ietf-httpapi-ratelimit-headers),
    plus ``Retry-After`` when refused; whole seconds, rounded up."""
    reset = max(0, math.ceil(decision.retry_after_s))
    headers = {"RateLimit-Limit": str(decision.limit),
               "RateLimit-Remaining": str(max(0, decision.remaining)),
               "RateLimit-Reset": str(reset)}
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, reset))
    return headers


class LocalBuckets:
    """The same all-or-nothing token buckets as the Lua script, in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, at, refill s)
        self._pruned_at = clock()

    def __len__(self) -> int:
        return len(self._state)

    def take(self, charges: Charges) -> Decision:
        """Debit every bucket, or none if any lacks its cost."""
        now = self._clock()
        self._prune(now)
        levels = []
        worst, worst_wait, tightest, tightest_left = -1, 0.0, 0, math.inf
        for i, (bucket, cost) in enumerate(charges):
            tokens, at, _ = self._state.get(bucket.key, (float(bucket.burst), now, 0.0))
            level = min(float(bucket.burst), tokens + max(0.0, now - at) * bucket.rate)
            levels.append(level)
            if cost > level:
                wait = (cost - level) / bucket.rate
                if wait > worst_wait:
                    worst, worst_wait = i, wait
            elif (level - cost) / bucket.burst < tightest_left:
                tightest, tightest_left = i, (level - cost) / bucket.burst
        if worst >= 0:
            bucket = charges[worst][0]
            return Decision(False, bucket.burst, math.floor(levels[worst]),
                            math.ceil(worst_wait * 1000) / 1000, bucket.key)
        for (bucket, cost), level in zip(charges, levels, strict=True):
            self._state[bucket.key] = (level - cost, now, bucket.burst / bucket.rate)
        bucket, cost = charges[tightest]
        return Decision(True, bucket.burst, math.floor(levels[tightest] - cost), 0.0, bucket.key)

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled: they would start full anyway, and memory stays
        bounded by the principals active within a refill time."""
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        for key, (_, at, refill_s) in list(self._state.items()):
            if now - at >= refill_s:
                del self._state[key]


class RateLimiter:
    """Checks and debits several buckets in one atomic step: in Redis, or in-process while
    Redis fails."""

    def __init__(self, client: redis.Redis, *, retry_s: float = RETRY_REDIS_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._script = client.register_script(TOKEN_BUCKET_LUA)
        self._local = LocalBuckets(clock)
        self._clock = clock
        self._retry_s = retry_s
        self._skip_redis_until = 0.0
        self._degraded: FallbackReason | None = None

    @property
    def degraded(self) -> FallbackReason | None:
        """Why the last check did not use Redis (None: it did)."""
        return self._degraded

    async def take(self, charges: Charges) -> Decision:
        """Debit ``cost`` from every bucket, or from none if any lacks it."""
        if self._clock() < self._skip_redis_until:
            return self._fall_back(charges, FallbackReason.UNREACHABLE, None)
        keys = [KEY_PREFIX + bucket.key for bucket, _ in charges]
        args: list[float | int] = []
        for bucket, cost in charges:
            args += [bucket.rate, bucket.burst, cost]
        try:
            allowed, index, retry_ms, remaining, burst = await self._script(keys=keys, args=args)
        except CONNECTION_ERRORS as e:
            self._skip_redis_until = self._clock() + self._retry_s
            return self._fall_back(charges, FallbackReason.UNREACHABLE, e)
        except redis_errors.RedisError as e:
            return self._fall_back(charges, FallbackReason.ERROR, e)
        if self._degraded is not None:
            log.warning("rate limits back in Redis", extra={"was": self._degraded.value})
            self._degraded = None
        return Decision(bool(allowed), int(burst), int(remaining), int(retry_ms) / 1000,
                        charges[int(index) - 1][0].key)

    def _fall_back(self, charges: Charges, reason: FallbackReason, error: BaseException | None) -> Decision:
        metrics.rate_limit_fallback.labels(reason.value).inc()
        if error is not None and self._degraded != reason:
            # Once per episode, not once per request.
            extra = {"reason": reason.value, "error": type(error).__name__}
            if reason is FallbackReason.ERROR:
                log.error("Redis refused the rate-limit check; limiting in this process",
                          extra={**extra, "detail": str(error)[:200]})
            else:
                log.warning("Redis unreachable; limiting in this process until it answers",
                            extra=extra)
        self._degraded = reason
        return self._local.take(charges)
