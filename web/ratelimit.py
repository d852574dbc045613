"""Token buckets in Redis: global and per principal, for requests and for records.

One Lua script checks and debits every bucket of a request atomically, so concurrent web
processes share the limits and a refused request takes nothing from any bucket. Time is
Redis's own clock, so web processes with skewed clocks agree.

When Redis does not answer, the check fails *open*: the request goes through, a warning
is logged and ``sluice_rate_limit_fail_open_total`` counts it. Rate limiting protects
capacity; refusing every upload because the limiter's store is down would turn a Redis
outage into a full outage (keyed submissions are still refused, by the idempotency store).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis.asyncio as redis
import redis.exceptions as redis_errors

from app import metrics

log = logging.getLogger(__name__)

KEY_PREFIX = "sluice:ratelimit:"

# KEYS: bucket keys. ARGV: rate, burst, cost for each bucket in turn.
# Returns {allowed, index of the limiting bucket (1-based), retry-after ms, remaining, burst}.
# A cost above a bucket's burst is capped at the burst: such a request passes only when
# the bucket is full, and empties it.
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = {}
local worst, worst_wait, tightest, tightest_left = 0, 0, 1, math.huge
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = math.min(tonumber(ARGV[3 * i]), burst)
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
  local cost = math.min(tonumber(ARGV[3 * i]), burst)
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - cost), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
local b = tightest
local burst = tonumber(ARGV[3 * b - 1])
local left = tokens[b] - math.min(tonumber(ARGV[3 * b]), burst)
return {1, b, 0, math.floor(left), burst}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket: refills at ``rate`` per second up to ``burst``."""

    key: str
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check, with what the RateLimit headers report."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    bucket: str


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


class RateLimiter:
    """Checks and debits several buckets in one atomic step."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    async def take(self, charges: list[tuple[Bucket, int]]) -> Decision:
        """Debit ``cost`` from every bucket, or from none if any lacks it."""
        keys = [KEY_PREFIX + bucket.key for bucket, _ in charges]
        args: list[float | int] = []
        for bucket, cost in charges:
            args += [bucket.rate, bucket.burst, cost]
        try:
            allowed, index, retry_ms, remaining, burst = await self._script(keys=keys, args=args)
        except (redis_errors.RedisError, OSError, TimeoutError) as e:
            metrics.rate_limit_fail_open.inc()
            log.warning("rate limit not checked: Redis unavailable, request let through",
                        extra={"error": type(e).__name__})
            return Decision(True, 0, 0, 0.0, "")
        return Decision(bool(allowed), int(burst), int(remaining), int(retry_ms) / 1000,
                        charges[int(index) - 1][0].key)
