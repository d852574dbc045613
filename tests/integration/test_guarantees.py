"""Nothing lost, nothing doubled: each promise of the README's Guarantees section, proved by
injecting the fault into real processes (killed by pid, services stopped and restarted)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from app.devtools.embedded import free_port
from app.settings import env_var
from tests.integration.helpers import (
    NDJSON,
    assert_exactly_once,
    big_job,
    job_of,
    ndjson,
    reading,
    reports_for,
    results,
    submit,
    wait_progress,
    wait_terminal,
)
from tests.integration.isolated import IsolatedStack, MakeStack, isolated_stacks


@pytest.fixture
def isolated() -> Iterator[MakeStack]:
    with isolated_stacks() as make:
        yield make


@pytest.fixture
async def session_for() -> AsyncIterator[Callable[[IsolatedStack], aiohttp.ClientSession]]:
    sessions: list[aiohttp.ClientSession] = []

    def open_session(stack: IsolatedStack) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(stack.base_url, headers=stack.auth_headers)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        await session.close()


# 1. Worker crash mid-job --------------------------------------------------------------

async def worker_killed_and_restarted_at_once(
    stack: IsolatedStack, http: aiohttp.ClientSession, kills: int
) -> None:
    """A worker killed with SIGKILL ``kills`` times during one job, each time restarted at
    once: the job completes exactly once."""
    stack.spawn("web")
    worker = stack.spawn("worker")
    tag = f"crash-{uuid.uuid4().hex[:6]}"
    body, invalid = big_job(tag, 100_000)
    accepted = await submit(http, body)
    progress = 0
    for _ in range(kills):
        progress = (await wait_progress(http, accepted["job_id"], progress + 12_000))["counts"]["succeeded"]
        stack.kill(worker)
        assert (await job_of(http, accepted["job_id"]))["state"] == "processing"
        # Restarted at once, while the dead member still holds its place in the group:
        # the new one claims the partitions in the database and continues from there.
        worker = stack.spawn("worker")
    await assert_exactly_once(http, stack.dsn, accepted["job_id"], tag, 100_000, invalid)


async def test_worker_killed_and_restarted_at_once_completes_exactly_once(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    """Once here: each kill waits out the embedded broker's group timeout (about 20 s). The
    Kafka lane kills three times (test_guarantees_on_kafka.py)."""
    stack = isolated()
    await worker_killed_and_restarted_at_once(stack, session_for(stack), kills=1)


async def with_second_worker(stack: IsolatedStack, http: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Start a second worker and return once both are in the group (joins take seconds here)."""
    stack.spawn("worker")
    warm = await submit(http, ndjson([reading(f"warm-{uuid.uuid4().hex[:6]}", i) for i in range(8)]))
    await wait_terminal(http, warm["job_id"], wait_s=120)
    await asyncio.sleep(6)
    return http


async def test_a_frozen_worker_that_lost_its_partitions_writes_nothing_twice(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    stack = isolated()
    stack.spawn("web")
    frozen = stack.spawn("worker")
    http = await with_second_worker(stack, session_for(stack))
    tag = f"frozen-{uuid.uuid4().hex[:6]}"
    body, invalid = big_job(tag, 100_000)
    accepted = await submit(http, body)
    await wait_progress(http, accepted["job_id"], 30_000)
    # Frozen mid-write (a long pause, a VM stall): its session times out, the other worker
    # takes its partitions over; then it wakes with a take in hand. Its epoch is stale, so
    # it must not write anything the new owner writes too.
    frozen.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(10)
    finally:
        frozen.send_signal(signal.SIGCONT)
    await assert_exactly_once(http, stack.dsn, accepted["job_id"], tag, 100_000, invalid)
    # Both workers ride out the takeover and the return (one that died of it would leave
    # the job to the other, and a second freeze to nobody).
    assert stack.crashed() == []


async def test_web_killed_mid_produce_fails_its_job_and_other_jobs_keep_flowing(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    stack = isolated(submission_timeout_s=20)  # room to parse the upload on a slow machine
    dying = stack.spawn("web")
    other_port = str(free_port())
    stack.spawn("web", **{env_var("http_port"): other_port})
    stack.spawn("worker")
    http = session_for(stack)
    other = aiohttp.ClientSession(f"http://127.0.0.1:{other_port}", headers=stack.auth_headers)
    conn = await asyncpg.connect(stack.dsn)
    try:
        warm = await submit(other, ndjson([reading("warm", 0)]))
        await wait_terminal(other, warm["job_id"], wait_s=120)
        tag = f"dying-{uuid.uuid4().hex[:6]}"
        n = 600_000
        upload = asyncio.create_task(http.post(
            "/v1/bulk-operations", params={"target": "sensor_readings"},
            data=ndjson([reading(tag, i) for i in range(n)]), headers=NDJSON))
        deadline = time.monotonic() + 60
        # A payload this big is recorded as a job, and produced, while it is parsed.
        while (job_id := await conn.fetchval(
                "SELECT job_id FROM sluice_jobs WHERE state = 'receiving'")) is None:
            assert time.monotonic() < deadline and not upload.done()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # some of its envelopes are in Kafka by now
        stack.kill(dying)
        (answer,) = await asyncio.gather(upload, return_exceptions=True)
        assert isinstance(answer, aiohttp.ClientError), answer
        # While the dead submission is still receiving, other jobs go through at once.
        for i in range(3):
            started = time.monotonic()
            small = await submit(other, ndjson([reading(f"{tag}-other{i}", j) for j in range(50)]))
            done = await wait_terminal(other, small["job_id"], wait_s=30)
            assert done["state"] == "completed"
            assert time.monotonic() - started < 5, "another job waited for the dead submission"
        assert await conn.fetchval("SELECT state FROM sluice_jobs WHERE job_id = $1", job_id) == "receiving"
        # Failed by its deadline (timeout + grace, database clock); nothing of it applied.
        deadline = time.monotonic() + 20 + 5 + 15
        while (state := await conn.fetchval(
                "SELECT state FROM sluice_jobs WHERE job_id = $1", job_id)) == "receiving":
            assert time.monotonic() < deadline, "the dead submission was never failed"
            await asyncio.sleep(0.5)
        assert state == "failed"
        await asyncio.sleep(3)
        assert await conn.fetchval(
            "SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", tag) == 0
        # Its envelopes that reached Kafka were held, then recorded as aborted, not applied.
        assert await conn.fetchval(
            "SELECT count(*) FROM sluice_record_results WHERE job_id = $1 AND status = 'aborted'",
            job_id) > 0
        assert await conn.fetchval(
            "SELECT count(*) FROM sluice_report_outbox WHERE job_id = $1", job_id) == 1
    finally:
        await conn.close()
        await other.close()


async def test_a_worker_killed_after_completing_a_job_still_gets_its_report_out(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    # The outbox is looked at every 30 s here, so the kill lands between the commit that
    # completes the job and the report's publication.
    stack = isolated(report_poll_s=30)
    stack.spawn("web")
    worker = stack.spawn("worker")
    http = session_for(stack)
    conn = await asyncpg.connect(stack.dsn)
    try:
        await asyncio.sleep(5)  # the publisher's first look has been (an empty outbox)
        accepted = await submit(http, ndjson([reading(f"rep-{uuid.uuid4().hex[:6]}", i)
                                              for i in range(20)]))
        await wait_terminal(http, accepted["job_id"], wait_s=120)
        stack.kill(worker)
        assert await conn.fetchval(
            "SELECT sent_at IS NULL FROM sluice_report_outbox WHERE job_id = $1", accepted["job_id"])
        stack.spawn("worker")
        reports = await asyncio.to_thread(reports_for, stack.env[env_var("kafka_bootstrap")],
                                          {accepted["job_id"]}, 90, stack.topics.job_reports)
        ((report,),) = reports.values()
        assert (report["state"], report["succeeded"]) == ("completed", 20)
    finally:
        await conn.close()


async def test_web_killed_between_seal_and_202_the_retry_gets_the_job_within_the_lease(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    # A lease of 5 + 15 s. The payload is produced once parsed whole (not while parsed), so
    # that the job is receiving only between the parse and the seal.
    stack = isolated(submission_timeout_s=5, stream_after_bytes=1 << 40)
    web = stack.spawn("web")
    stack.spawn("worker")
    http = session_for(stack)
    n = 200_000
    payload = ndjson([reading(f"seal-{uuid.uuid4().hex[:6]}", i) for i in range(n)])
    key = {"Idempotency-Key": str(uuid.uuid4())}
    conn = await asyncpg.connect(stack.dsn)
    valkey = redis.from_url(stack.redis_url)
    try:
        upload = asyncio.create_task(http.post(
            "/v1/bulk-operations", params={"target": "sensor_readings"}, data=payload,
            headers={**NDJSON, **key}))
        deadline = time.monotonic() + 60
        while not await conn.fetchval(
                "SELECT true FROM sluice_jobs WHERE state = 'receiving' AND records_received = $1", n):
            assert time.monotonic() < deadline and not upload.done()
            await asyncio.sleep(0.01)
        # Writes to Valkey wait from now on: the web process seals the job, then hangs
        # storing its 202, and is killed there.
        await valkey.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        try:
            while (job_id := await conn.fetchval(
                    "SELECT job_id FROM sluice_jobs WHERE state <> 'receiving'"
                    " AND records_received = $1", n)) is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            stack.kill(web)
        finally:
            await valkey.execute_command("CLIENT", "UNPAUSE")
        with pytest.raises(aiohttp.ClientError):
            await upload
        stack.spawn("web")
        retried_at = time.monotonic()
        while True:
            async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                                 data=payload, headers={**NDJSON, **key}) as r:
                if r.status == 202:
                    assert (await r.json())["job_id"] == job_id
                    break
                assert r.status == 409, await r.text()
                assert time.monotonic() - retried_at < 5 + 15 + 2, "still in flight after the lease"
                await asyncio.sleep(float(r.headers["Retry-After"]))
        job = await wait_terminal(http, job_id, wait_s=120)
        assert job["counts"]["received"] == n and job["counts"]["succeeded"] == n
    finally:
        await conn.close()
        await valkey.aclose()


def _commit_group_to_end(bootstrap: str, group: str, topic: str) -> None:
    """What a lost or stale Kafka offset commit looks like: the group's offsets at the log
    end, committed by a member of the group (the embedded broker refuses commits from
    outside it)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            assert time.monotonic() < deadline, "never joined the group"
            consumer.poll(0.5)
        ends = []
        for tp in consumer.assignment():
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            ends.append(TopicPartition(topic, tp.partition, high))
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


async def kafka_offsets_ahead_of_the_database_skip_nothing(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    """Run in the Kafka lane only (test_guarantees_on_kafka.py): committed consumer offsets
    are the broker's; the embedded broker keeps its topics in memory only."""
    stack = isolated()
    stack.spawn("web")
    worker = stack.spawn("worker")
    http = session_for(stack)
    warm = await submit(http, ndjson([reading(f"warm-{uuid.uuid4().hex[:6]}", i) for i in range(8)]))
    await wait_terminal(http, warm["job_id"], wait_s=120)
    stack.kill(worker)
    tag = f"ahead-{uuid.uuid4().hex[:6]}"
    accepted = await submit(http, ndjson([reading(tag, i) for i in range(5_000)]))
    await asyncio.sleep(8)  # the dead member's session ends: the group is empty
    await asyncio.to_thread(_commit_group_to_end, stack.env[env_var("kafka_bootstrap")],
                            stack.env[env_var("worker_id")] + ".records", stack.topics.records)
    # Kafka says everything was consumed; the database's positions say otherwise, and win.
    stack.spawn("worker")
    job = await wait_terminal(http, accepted["job_id"], wait_s=120)
    assert job["state"] == "completed" and job["counts"]["succeeded"] == 5_000


# 2. Two workers, one dies --------------------------------------------------------------

async def test_surviving_worker_takes_over_and_completes_exactly_once(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    stack = isolated()
    stack.spawn("web")
    first = stack.spawn("worker")
    http = await with_second_worker(stack, session_for(stack))
    tag = f"pair-{uuid.uuid4().hex[:6]}"
    body, invalid = big_job(tag, 200_000)
    accepted = await submit(http, body)
    await wait_progress(http, accepted["job_id"], 40_000)
    stack.kill(first)
    await assert_exactly_once(http, stack.dsn, accepted["job_id"], tag, 200_000, invalid)


# 3. PostgreSQL outage ------------------------------------------------------------------

async def test_postgresql_outage_longer_than_the_stall_timeout_stalls_then_completes(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    # The outage outlasts the stall timeout (6 minutes against the default 300 s, scaled
    # down here): the job is flagged at most, never failed or aborted.
    stack = isolated(db_retry_max_s=2, job_stall_timeout_s=5)
    stack.spawn("web")
    stack.spawn("worker")
    http = session_for(stack)
    tag = f"pgdown-{uuid.uuid4().hex[:6]}"
    body, invalid = big_job(tag, 200_000)
    accepted = await submit(http, body)
    await wait_progress(http, accepted["job_id"], 40_000)
    postgres: Any = stack.service("postgres")
    postgres.stop()
    try:
        async with http.get("/readyz") as r:
            assert r.status == 503
            assert (await r.json())["checks"]["postgresql"].startswith("unavailable")
        async with http.get(f"/v1/bulk-operations/{accepted['job_id']}") as r:
            assert r.status == 503
            assert r.headers["Retry-After"]
        await asyncio.sleep(15)  # three stall timeouts
    finally:
        postgres.start()
    await assert_exactly_once(http, stack.dsn, accepted["job_id"], tag, 200_000, invalid)
    async with http.get("/readyz") as r:
        assert r.status == 200


# 4. Redis outage -----------------------------------------------------------------------

async def test_redis_outage_refuses_keyed_requests_only(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    stack = isolated()
    stack.spawn("web")
    http = session_for(stack)
    valkey: Any = stack.service("valkey")
    valkey.stop()
    body = ndjson([reading(f"redis-{uuid.uuid4().hex[:6]}", i) for i in range(3)])
    started = time.monotonic()
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"}, data=body,
                         headers={**NDJSON, "Idempotency-Key": str(uuid.uuid4())}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        assert (await r.json(content_type=None))["type"].endswith("idempotency-unavailable")
    assert time.monotonic() - started < 10
    await submit(http, body)  # without a key: accepted, documented in the README
    valkey.start()
    await submit(http, body, headers={**NDJSON, "Idempotency-Key": str(uuid.uuid4())})


# 5. Broker unavailable -----------------------------------------------------------------

async def test_broker_down_gets_503_within_the_submission_timeout(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    stack = isolated(submission_timeout_s=5)
    stack.spawn("web")
    http = session_for(stack)
    broker: Any = stack.service("broker")
    broker.stop()
    started = time.monotonic()
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                         data=ndjson([reading("down", i) for i in range(10)]), headers=NDJSON) as r:
        assert r.status == 503
        assert r.headers["Retry-After"]
    assert time.monotonic() - started < 5 + 2
    conn = await asyncpg.connect(stack.dsn)
    try:
        states = await conn.fetch("SELECT state FROM sluice_jobs")
    finally:
        await conn.close()
    assert [s["state"] for s in states] == ["failed"]  # never reported as accepted


async def test_a_restart_on_a_new_broker_and_the_kept_database_applies_the_first_jobs(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    # `make run` a second time: the embedded broker's topics were in memory and are new,
    # PostgreSQL kept the positions the old records topic had reached. (The same as
    # pointing a kept database at a new Kafka cluster, or recreating the records topic.)
    stack = isolated()
    processes = [stack.spawn("web"), stack.spawn("worker")]
    http = session_for(stack)
    first = await submit(http, ndjson([reading(f"life1-{uuid.uuid4().hex[:6]}", i) for i in range(40)]))
    assert (await wait_terminal(http, first["job_id"], wait_s=120))["state"] == "completed"
    for process in processes:
        stack.kill(process)
    broker: Any = stack.service("broker")
    broker.stop()
    broker.start()
    stack.spawn("web")
    stack.spawn("worker")
    http = session_for(stack)  # the first session's connections went with the old web
    tag = f"life2-{uuid.uuid4().hex[:6]}"
    second = await submit(http, ndjson([reading(tag, i) for i in range(40)]))
    job = await wait_terminal(http, second["job_id"], wait_s=120)
    assert (job["state"], job["counts"]["succeeded"]) == ("completed", 40)


# 6. Backpressure -----------------------------------------------------------------------

async def test_backpressure_refuses_new_work_and_accepted_work_drains(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    stack = isolated(max_queue_records=1_000)
    stack.spawn("web")
    http = session_for(stack)
    tag = f"bp-{uuid.uuid4().hex[:6]}"
    first = await submit(http, ndjson([reading(tag, i) for i in range(5_000)]))
    await asyncio.sleep(1.2)  # the backlog is read at most once a second
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                         data=ndjson([reading(tag, 9_999)]), headers=NDJSON) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        assert (await r.json(content_type=None))["type"].endswith("backpressure")
    stack.spawn("worker")
    assert (await wait_terminal(http, first["job_id"], wait_s=120))["state"] == "completed"
    await asyncio.sleep(1.2)
    await submit(http, ndjson([reading(tag, 9_999)]))


# 7. Concurrency ------------------------------------------------------------------------

async def test_upload_251_is_refused_while_200_are_in_flight(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    # One tenant: its share is the whole service here (fair shares have tests of their own).
    stack = isolated(max_concurrent_uploads=200, max_tenant_uploads=200, submission_timeout_s=60)
    stack.spawn("web")
    release = asyncio.Event()
    tag = f"conc-{uuid.uuid4().hex[:6]}"

    async def slow_body(i: int) -> AsyncIterator[bytes]:
        yield ndjson([reading(f"{tag}-{i}", 0)])
        await release.wait()
        yield ndjson([reading(f"{tag}-{i}", 1)])

    async with aiohttp.ClientSession(
        stack.base_url, connector=aiohttp.TCPConnector(limit=0), headers=stack.auth_headers
    ) as http:
        async def upload(body: Any) -> int:
            async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                                 data=body, headers=NDJSON) as r:
                await r.read()
                return r.status

        holding = [asyncio.create_task(upload(slow_body(i))) for i in range(200)]
        await asyncio.sleep(3)  # all 200 are inside the server, holding their slots
        extra = await asyncio.wait_for(asyncio.gather(
            *(upload(ndjson([reading(f"{tag}-x", i)])) for i in range(50))), timeout=20)
        assert extra == [503] * 50
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*holding), timeout=60) == [202] * 200


# 8. Timeouts ---------------------------------------------------------------------------

async def test_stalled_upload_is_cut_off_and_leaves_nothing(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    stack = isolated(submission_timeout_s=2)
    stack.spawn("web")
    http = session_for(stack)

    async def stalling_body() -> AsyncIterator[bytes]:
        yield ndjson([reading("stall", i) for i in range(100)])
        await asyncio.sleep(30)
        yield b""

    started = time.monotonic()
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                         data=stalling_body(), headers=NDJSON) as r:
        assert r.status == 408
    assert time.monotonic() - started < 10
    conn = await asyncpg.connect(stack.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sluice_jobs") == 0
    finally:
        await conn.close()


async def test_a_job_without_progress_is_flagged_never_failed_and_completes_later(
    isolated: MakeStack, session_for: Callable[[IsolatedStack], aiohttp.ClientSession]
) -> None:
    metrics_port = free_port()
    stack = isolated(job_stall_timeout_s=2, web_metrics_port=metrics_port)
    stack.spawn("web")  # and no worker yet: nothing progresses
    http = session_for(stack)
    accepted = await submit(http, ndjson([reading("stuck", i) for i in range(10)]))
    deadline = time.monotonic() + 30
    while (job := await job_of(http, accepted["job_id"]))["stalled_since"] is None:
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.2)
    assert (job["state"], job["reason"]) == ("accepted", "no progress for 2 s")
    await asyncio.sleep(3)  # well past the stall timeout: still not failed
    assert (await job_of(http, accepted["job_id"]))["state"] == "accepted"
    async with aiohttp.ClientSession() as scraper, \
            scraper.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        assert "sluice_stalled_jobs 1.0" in await r.text()
    # New work is still admitted: one old job does not close the door.
    await submit(http, ndjson([reading("stuck-after", 0)]))
    stack.spawn("worker")
    job = await wait_terminal(http, accepted["job_id"], wait_s=90)
    assert job["state"] == "completed" and job["counts"]["succeeded"] == 10
    assert (job["reason"], job["stalled_since"]) == (None, None)


# 9. Deadlocks ---------------------------------------------------------------------------

async def test_opposite_order_upserts_of_the_same_rows_both_complete(
    http: aiohttp.ClientSession
) -> None:
    tag = f"dl-{uuid.uuid4().hex[:6]}"
    forward = [reading(f"{tag}-{i % 50}", i, 1.0) for i in range(4_000)]
    backward = [reading(f"{tag}-{i % 50}", i, 2.0) for i in reversed(range(4_000))]
    jobs = await asyncio.gather(submit(http, ndjson(forward), operation="upsert"),
                                submit(http, ndjson(backward), operation="upsert"))
    for accepted in jobs:
        job = await wait_terminal(http, accepted["job_id"])
        assert job["state"] == "completed", job
        assert job["counts"]["succeeded"] == 4_000


# 11. Abort -----------------------------------------------------------------------------

async def test_abort_skips_what_is_not_written_and_keeps_what_is(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    tag = f"abort-{uuid.uuid4().hex[:6]}"
    accepted = await submit(http, ndjson([reading(f"{tag}-{i % 97}", i) for i in range(100_000)]))
    await wait_progress(http, accepted["job_id"], 1)
    async with http.delete(f"/v1/bulk-operations/{accepted['job_id']}") as r:
        assert r.status == 202
        assert (await r.json())["state"] == "aborted"
    deadline = time.monotonic() + 120
    while True:
        job = await job_of(http, accepted["job_id"])
        counts = job["counts"]
        if counts["succeeded"] + counts["aborted"] == 100_000 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert job["state"] == "aborted"
    assert counts["aborted"] > 0 and counts["succeeded"] > 0
    assert counts["succeeded"] + counts["aborted"] == 100_000
    written = await db.fetchval(
        "SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1", tag + "-%")
    assert written == counts["succeeded"]
    aborted_lines = await results(http, accepted["job_id"], "aborted")
    assert len(aborted_lines) == counts["aborted"]
    async with http.delete(f"/v1/bulk-operations/{accepted['job_id']}") as r:
        assert r.status == 409


# 1b. A redelivered envelope ------------------------------------------------------------

async def test_a_redelivered_envelope_is_not_applied_twice(
    stack: Any, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    from aiokafka import AIOKafkaProducer

    from schemas.envelope import Envelope, EnvelopeCodec, Item
    from schemas.preparation import RecordPreparer
    from schemas.targets import BUILTIN_TARGETS_DIR, load_targets

    tag = f"redeliver-{uuid.uuid4().hex[:6]}"
    accepted = await submit(http, ndjson([reading(tag, i) for i in range(5)]))
    first = await wait_terminal(http, accepted["job_id"])
    # The same records of the same job, as a crash between commit and ack redelivers them.
    targets = load_targets(BUILTIN_TARGETS_DIR)
    preparer = RecordPreparer(targets["sensor_readings"], "insert", 4)
    items: dict[int, list[Item]] = {}
    for i in range(5):
        partition, item = preparer.prepare(i, reading(tag, i))
        items.setdefault(partition, []).append(item)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka, acks="all")
    await producer.start()
    try:
        for partition, batch in items.items():
            envelope = Envelope(accepted["job_id"], "sensor_readings", "insert", batch)
            await producer.send_and_wait("sluice.records", EnvelopeCodec(targets).encode(envelope),
                                         key=str(partition).encode(), partition=partition)
    finally:
        await producer.stop()
    # A later job on every partition completes, so the redelivery has been processed.
    after = await submit(http, ndjson([reading(f"{tag}-after", i) for i in range(40)]))
    await wait_terminal(http, after["job_id"])
    again = await job_of(http, accepted["job_id"])
    assert again["counts"] == first["counts"] == {
        "received": 5, "succeeded": 5, "failed": 0, "duplicates": 0, "aborted": 0}
    assert await db.fetchval(
        "SELECT count(*) FROM sluice_record_results WHERE job_id = $1", accepted["job_id"]) == 5


# Producer topics ---------------------------------------------------------------------------

def _produce_readings(bootstrap: str, topic: str, sensor: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(n):
        producer.produce(topic, value=orjson.dumps(reading(sensor, i)), key=b"k")
    assert producer.flush(30) == 0


async def test_a_recreated_producer_topic_is_applied_not_taken_for_the_old_one(
    isolated: MakeStack,
) -> None:
    stack = isolated()
    stack.spawn("web")  # creates the input topics
    stack.spawn("worker")
    bootstrap = stack.env[env_var("kafka_bootstrap")]
    topic = stack.topics.input_for("sensor_readings")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    conn = await asyncpg.connect(stack.dsn)

    async def rows_of(sensor: str, n: int) -> None:
        deadline = time.monotonic() + 90
        while (count := await conn.fetchval(
                "SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", sensor)) < n:
            assert time.monotonic() < deadline, f"{count} of {n} rows of {sensor}"
            await asyncio.sleep(0.3)

    try:
        await asyncio.to_thread(_produce_readings, bootstrap, topic, "first-life", 30)
        await rows_of("first-life", 30)
        admin.delete_topics([topic])[topic].result()
        await asyncio.sleep(2)
        partitions = int(stack.env.get(env_var("partitions"), "4"))
        replicas = int(stack.env.get(env_var("topic_replication_factor"), "1"))
        admin.create_topics([NewTopic(topic, partitions, replicas)])[topic].result()
        # The same offsets again, other records: a new stream, not a redelivery.
        await asyncio.to_thread(_produce_readings, bootstrap, topic, "second-life", 30)
        await rows_of("second-life", 30)
        jobs = await conn.fetch("SELECT job_id, succeeded FROM sluice_jobs WHERE source = 'kafka'"
                                " ORDER BY created_at")
        assert len({j["job_id"].rsplit(":", 1)[1] for j in jobs}) == 2  # two topic incarnations
    finally:
        await conn.close()
