"""Idempotency keys in Redis: one submission per key for 24 h, replayed on repeat.

The in-flight claim is a lease of about the submission timeout, not the 24 h of a
stored answer: a web process that dies between sealing a job and answering leaves a
claim that expires soon, and the retry then finds the sealed job in PostgreSQL (the job
row carries the hashed key) and replays its 202.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis

KEY_PREFIX = "sluice:idem:"
"""Namespace for idempotency records; the client's key is hashed so any string is safe."""
MAX_KEY_LENGTH = 255
IN_FLIGHT = "in_flight"
DONE = "done"


def tenant_scoped(tenant: str, key: str) -> str:
    """The stored key: per tenant, so another tenant's key can neither collide nor replay its job."""
    return f"{tenant}\x00{key}"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What a completed request answered, to replay it."""

    fingerprint: str
    status: int
    body: dict[str, Any]
    location: str


class IdempotencyStore:
    """Claims, completes and releases idempotency keys atomically (SET NX)."""

    def __init__(self, client: redis.Redis, ttl_s: int, lease_s: int) -> None:
        self._redis = client
        self._ttl = ttl_s
        self._lease = lease_s

    @staticmethod
    def key_hash(key: str) -> str:
        """The key as stored (in Redis and on the job row): any string is safe, none is kept."""
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def _redis_key(cls, key: str) -> str:
        return KEY_PREFIX + cls.key_hash(key)

    async def lease_remaining_s(self, key: str) -> int:
        """Seconds until an in-flight claim lapses (at least 1)."""
        return max(1, int(await self._redis.ttl(self._redis_key(key))))

    async def claim(self, key: str) -> StoredResponse | str | None:
        """Claim a key. None: claimed, go ahead. IN_FLIGHT: another request holds it.
        A StoredResponse: the key already completed."""
        redis_key = self._redis_key(key)
        claimed = await self._redis.set(
            redis_key, orjson.dumps({"state": IN_FLIGHT}), nx=True, ex=self._lease
        )
        if claimed:
            return None
        raw = await self._redis.get(redis_key)
        if raw is None:  # expired between the two calls: try once more
            return await self.claim(key)
        doc = orjson.loads(raw)
        if doc["state"] == IN_FLIGHT:
            return IN_FLIGHT
        return StoredResponse(doc["fingerprint"], doc["status"], doc["body"], doc["location"])

    async def complete(self, key: str, response: StoredResponse) -> None:
        """Store the response of a completed request for replays."""
        await self._redis.set(
            self._redis_key(key),
            orjson.dumps({"state": DONE, "fingerprint": response.fingerprint,
                          "status": response.status, "body": response.body,
                          "location": response.location}),
            ex=self._ttl,
        )

    async def release(self, key: str) -> None:
        """Free a key whose request failed, so the client may retry it."""
        await self._redis.delete(self._redis_key(key))


class Fingerprint:
    """SHA-256 over what makes two submissions the same: route, parameters and raw body."""

    def __init__(self, *parts: str) -> None:
        self._hash = hashlib.sha256()
        for part in parts:
            # Length-prefixed: no choice of parts can shift a boundary and collide.
            encoded = part.encode()
            self._hash.update(len(encoded).to_bytes(8, "big") + encoded)

    def update(self, chunk: bytes) -> None:
        """Feed raw body bytes."""
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        """The fingerprint."""
        return self._hash.hexdigest()
