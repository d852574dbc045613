"""`Prefer: wait=N`: a small payload answered 200 with its outcome when its job ends in
time; 202 otherwise, with the same job and guarantees."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg

from app.store import jobs
from tests.integration.conftest import Stack
from tests.integration.helpers import ndjson, reading, wait_terminal
from web.job_endings import JobEndings

NDJSON = {"Content-Type": "application/x-ndjson"}
SUBMIT = "/v1/bulk-operations?target=sensor_readings"


async def test_a_small_payload_is_answered_200_with_its_counts_and_failed_lines(
    http: aiohttp.ClientSession,
) -> None:
    tag = f"wait-{uuid.uuid4().hex[:6]}"
    records = [reading(tag, i) for i in range(200)]
    for i in (17, 150):
        records[i] = {**records[i], "value": "not a number"}
    async with http.post(SUBMIT, data=ndjson(records), headers={**NDJSON, "Prefer": "wait=20"}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Preference-Applied"] == "wait=20"
        outcome = await r.json()
    assert outcome["state"] == "completed_with_errors"
    assert outcome["counts"] == {"received": 200, "succeeded": 198, "failed": 2, "duplicates": 0,
                                 "aborted": 0}
    assert [(line["index"], line["code"]) for line in outcome["results"]] == [
        (17, "wrong_type"), (150, "wrong_type")]
    assert outcome["results_truncated"] is False
    # The same job as GET shows, and as an asynchronous client would have found it.
    assert (await wait_terminal(http, outcome["job_id"]))["counts"] == outcome["counts"]


async def test_without_the_preference_or_over_the_size_it_is_202(http: aiohttp.ClientSession) -> None:
    tag = f"wait-{uuid.uuid4().hex[:6]}"
    async with http.post(SUBMIT, data=ndjson([reading(tag, 0)]), headers=NDJSON) as r:
        assert r.status == 202
    # Over 5 MiB (SLUICE_PREFER_WAIT_MAX_BODY_BYTES): asynchronous whatever is asked.
    big = ndjson([reading(tag, i) for i in range(1, 80_000)])
    assert len(big) > 5 * 1024 * 1024
    async with http.post(SUBMIT, data=big, headers={**NDJSON, "Prefer": "wait=30"}) as r:
        assert r.status == 202 and "Preference-Applied" not in r.headers
        await wait_terminal(http, (await r.json())["job_id"])
    # A preference it cannot read is a hint ignored, never an error.
    async with http.post(SUBMIT, data=ndjson([reading(tag, 90_000)]),
                         headers={**NDJSON, "Prefer": "wait=soon, respond-async"}) as r:
        assert r.status == 202


async def test_a_replay_of_a_keyed_request_answers_the_202(http: aiohttp.ClientSession) -> None:
    tag = f"wait-{uuid.uuid4().hex[:6]}"
    headers = {**NDJSON, "Prefer": "wait=20", "Idempotency-Key": tag}
    body = ndjson([reading(tag, i) for i in range(5)])
    async with http.post(SUBMIT, data=body, headers=headers) as first:
        assert first.status == 200
        job_id = (await first.json())["job_id"]
    async with http.post(SUBMIT, data=body, headers=headers) as again:
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert (await again.json())["job_id"] == job_id


async def test_a_waiter_gives_up_at_its_deadline_and_is_woken_by_the_end(
    stack: Stack, db: asyncpg.Pool
) -> None:
    """On the stack's database: an accepted job nobody applies waits out the deadline;
    ended meanwhile, it is noticed at once (the notification), not at the next look."""
    tenant = f"wait-{uuid.uuid4().hex[:6]}"
    endings = JobEndings(db, stack.dsn)
    endings.start()
    try:
        await asyncio.sleep(0.5)  # listening
        job_id = str(uuid.uuid4())
        await jobs.create_receiving(db, job_id, "sensor_readings", "insert", 1, seal_within_s=60,
                                    tenant=tenant)
        await jobs.seal(db, job_id)
        started = time.monotonic()
        assert await endings.wait(job_id, tenant, 1.5) is None
        assert 1.4 < time.monotonic() - started < 3

        waiting = asyncio.create_task(endings.wait(job_id, tenant, 30))
        await asyncio.sleep(0.3)
        aborted_at = time.monotonic()
        await jobs.abort(db, job_id, tenant)
        ended = await waiting
        assert ended is not None and ended["state"] == "aborted"
        assert time.monotonic() - aborted_at < 0.5, "woken by the next look, not the notification"
    finally:
        await endings.stop()


async def test_the_wait_counts_from_the_request_not_from_its_acceptance(
    http: aiohttp.ClientSession,
) -> None:
    """RFC 7240: `wait=N` asks for an answer within N seconds of the request. A body that
    took longer than that to arrive is answered 202 at once, not held N seconds more."""
    tag = f"wait-{uuid.uuid4().hex[:6]}"

    async def slow_body() -> AsyncIterator[bytes]:
        yield ndjson([reading(tag, 0)])
        await asyncio.sleep(2.5)
        yield ndjson([reading(tag, 1)])

    started = time.monotonic()
    async with http.post(SUBMIT, data=slow_body(), headers={**NDJSON, "Prefer": "wait=2"}) as r:
        assert r.status == 202, "the preferred wait had passed while the body arrived"
        assert "Preference-Applied" not in r.headers
        job_id = (await r.json())["job_id"]
    assert time.monotonic() - started < 3.5
    await wait_terminal(http, job_id)

    # Time left: the job's end is waited for, within the preferred time counted from the start.
    started = time.monotonic()
    async with http.post(SUBMIT, data=ndjson([reading(tag, 2)]),
                         headers={**NDJSON, "Prefer": "wait=20"}) as r:
        assert r.status == 200
    assert time.monotonic() - started < 20
