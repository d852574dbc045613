"""Idempotency-Key against the real Valkey: replay, in-flight conflict, reuse with another payload."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson
import redis.asyncio as redis

from tests.integration.conftest import Stack
from tests.integration.helpers import wait_terminal
from web.idempotency import IdempotencyStore, tenant_scoped

NDJSON = {"Content-Type": "application/x-ndjson"}
PARAMS = {"target": "sensor_readings", "operation": "insert"}


def body(tag: str, n: int = 3) -> bytes:
    return b"".join(orjson.dumps({"sensor_id": tag, "value": i, "sampled_at": i}) + b"\n"
                    for i in range(n))


async def test_repeat_replays_the_first_response(http: aiohttp.ClientSession) -> None:
    key = str(uuid.uuid4())
    payload = body(f"idem-{key[:8]}")
    async with http.post("/v1/bulk-operations", params=PARAMS, data=payload,
                         headers={**NDJSON, "Idempotency-Key": key}) as r:
        assert r.status == 202
        first = await r.json()
    await wait_terminal(http, first["job_id"])
    async with http.post("/v1/bulk-operations", params=PARAMS, data=payload,
                         headers={**NDJSON, "X-Idempotency-Key": key}) as r:
        assert r.status == 202
        assert r.headers["Idempotent-Replayed"] == "true"
        again = await r.json()
    assert again["job_id"] == first["job_id"]
    async with http.get(f"/v1/bulk-operations/{first['job_id']}") as r:
        assert (await r.json())["counts"]["received"] == 3  # not submitted twice


async def test_same_key_other_payload_is_422(http: aiohttp.ClientSession) -> None:
    key = str(uuid.uuid4())
    async with http.post("/v1/bulk-operations", params=PARAMS, data=body("idem-a"),
                         headers={**NDJSON, "Idempotency-Key": key}) as r:
        assert r.status == 202
    async with http.post("/v1/bulk-operations", params=PARAMS, data=body("idem-b"),
                         headers={**NDJSON, "Idempotency-Key": key}) as r:
        assert r.status == 422
        assert (await r.json(content_type=None))["type"].endswith("idempotency-key-reused")


async def test_key_in_flight_is_409(http: aiohttp.ClientSession, stack: Stack) -> None:
    key = str(uuid.uuid4())
    client = redis.from_url(stack.redis_url)
    try:
        # Another request of the same tenant holds the key (claimed the way the web process claims it).
        assert await IdempotencyStore(client, 86_400, 45).claim(tenant_scoped("dev", key)) is None
        async with http.post("/v1/bulk-operations", params=PARAMS, data=body("idem-c"),
                             headers={**NDJSON, "Idempotency-Key": key}) as r:
            assert r.status == 409
            # The claim is a lease: the client is told when it lapses, not to come back in a day.
            assert 1 <= int(r.headers["Retry-After"]) <= 45
    finally:
        await client.aclose()


async def test_failed_request_releases_its_key(http: aiohttp.ClientSession) -> None:
    key = str(uuid.uuid4())
    async with http.post("/v1/bulk-operations", params={**PARAMS, "target": "nope"},
                         data=body("idem-d"), headers={**NDJSON, "Idempotency-Key": key}) as r:
        assert r.status == 422
    async with http.post("/v1/bulk-operations", params=PARAMS, data=body("idem-d"),
                         headers={**NDJSON, "Idempotency-Key": key}) as r:
        assert r.status == 202


async def test_a_lapsed_claim_of_a_sealed_job_replays_its_202(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    # A web process that died between sealing the job and answering 202 leaves the key
    # in flight and no stored answer: recreate that state after a real submission.
    key = str(uuid.uuid4())
    payload = body(f"idem-lease-{key[:8]}")
    async with http.post("/v1/bulk-operations", params=PARAMS, data=payload,
                         headers={**NDJSON, "Idempotency-Key": key}) as r:
        assert r.status == 202
        first = await r.json()
    client = redis.from_url(stack.redis_url)
    try:
        stored = "sluice:idem:" + IdempotencyStore.key_hash(tenant_scoped("dev", key))
        await client.set(stored, orjson.dumps({"state": "in_flight"}), ex=2)
        async with http.post("/v1/bulk-operations", params=PARAMS, data=payload,
                             headers={**NDJSON, "Idempotency-Key": key}) as r:
            assert r.status == 409 and int(r.headers["Retry-After"]) <= 2
        await asyncio.sleep(2.5)  # the lease lapses
        async with http.post("/v1/bulk-operations", params=PARAMS, data=payload,
                             headers={**NDJSON, "Idempotency-Key": key}) as r:
            assert r.status == 202, await r.text()
            assert r.headers["Idempotent-Replayed"] == "true"
            assert (await r.json())["job_id"] == first["job_id"]
        # The same key with another payload is still a reuse, not a new job.
        await client.delete(stored)
        async with http.post("/v1/bulk-operations", params=PARAMS, data=body("idem-other"),
                             headers={**NDJSON, "Idempotency-Key": key}) as r:
            assert r.status == 422
    finally:
        await client.aclose()
    async with http.get(f"/v1/bulk-operations/{first['job_id']}") as r:
        assert (await r.json())["counts"]["received"] == 3  # submitted once
