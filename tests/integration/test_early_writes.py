"""A big job is written while it is received, and nothing of it is visible before its seal.

First on the sink against the test PostgreSQL (the open transaction, its commit, its
rollback, its fence, a session PostgreSQL ends, a lock it holds); then end to end on the
shared stack, whose payloads from about 15,000 records on are produced while parsed.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import aiohttp
import asyncpg
import pytest

from app.settings import env_var
from app.store import jobs, ledger
from app.store import sink as sink_module
from app.store.errors import is_lock_timeout
from app.store.positions import Fenced, PartitionPositions
from app.store.sink import EarlyJobWrite, PostgresSink
from schemas.envelope import Envelope, Item
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from tests.integration.conftest import Stack
from tests.integration.helpers import BASE_MS, NDJSON, ndjson, reading, submit, wait_terminal
from tests.integration.test_partition_ownership import _sealed_job

AT = datetime.fromtimestamp(BASE_MS / 1000, UTC)


def _sink(db: asyncpg.Pool) -> PostgresSink:
    positions = PartitionPositions(f"early-{uuid.uuid4().hex[:8]}", "sluice.records")
    return PostgresSink(db, load_targets(BUILTIN_TARGETS_DIR), positions=positions,
                        topic="sluice.records")


async def _receiving_job(db: asyncpg.Pool, records: int) -> str:
    job_id = str(uuid.uuid4())
    await jobs.create_receiving(db, job_id, "sensor_readings", "insert", records,
                                seal_within_s=30, tenant="dev", principal="dev")
    return job_id


def _envelope(job_id: str, sensor: str, indexes: range) -> Envelope:
    return Envelope(job_id, "sensor_readings", "insert",
                    [Item(i, (sensor, float(i), AT + timedelta(seconds=i))) for i in indexes])


async def _rows(db: asyncpg.Pool, sensor: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", sensor)
    return count


async def _outcomes(db: asyncpg.Pool, job_id: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM sluice_record_results WHERE job_id = $1",
                                   job_id)
    return count


async def _open(sink: PostgresSink, job_id: str) -> EarlyJobWrite:
    early = await sink.open_job(job_id)
    assert early is not None
    return early


async def test_rows_are_invisible_until_the_seal_then_committed_with_the_counts(db: asyncpg.Pool) -> None:
    sink, sensor = _sink(db), f"early-{uuid.uuid4().hex[:8]}"
    owner = (await sink.claim([1]))[1]
    job_id = await _receiving_job(db, 300)
    early = await _open(sink, job_id)
    await early.write([_envelope(job_id, sensor, range(0, 150))])
    await early.write([_envelope(job_id, sensor, range(150, 300))])
    assert await _rows(db, sensor) == 0 and await _outcomes(db, job_id) == 0
    await jobs.seal(db, job_id, records=300)
    chunks = await early.finish(owner)
    assert chunks is not None and [len(c.result.blocks[0]) for c in chunks] == [150, 150]
    assert chunks[-1].result.jobs[job_id]["state"] == "completed"
    assert await _rows(db, sensor) == 300 and await _outcomes(db, job_id) == 300
    # Delivered again by the ordinary path (a crash before the position moved): found in
    # the ledger and re-published, never applied twice.
    again = await sink.write([_envelope(job_id, sensor, range(0, 150))], owner)
    assert again.records == 0 and sum(len(b) for b in again.replayed) == 150
    assert await _rows(db, sensor) == 300


async def test_a_failed_submission_rolls_everything_back(db: asyncpg.Pool) -> None:
    sink, sensor = _sink(db), f"early-{uuid.uuid4().hex[:8]}"
    owner = (await sink.claim([1]))[1]
    job_id = await _receiving_job(db, 100)
    early = await _open(sink, job_id)
    await early.write([_envelope(job_id, sensor, range(100))])
    await jobs.fail_submission_now(db, job_id, "the client went away")
    assert await early.finish(owner) is None
    assert await _rows(db, sensor) == 0 and await _outcomes(db, job_id) == 0
    await early.discard()  # idempotent


async def test_an_owner_fenced_meanwhile_commits_nothing(db: asyncpg.Pool) -> None:
    sink, sensor = _sink(db), f"early-{uuid.uuid4().hex[:8]}"
    first = (await sink.claim([2]))[2]
    job_id = await _receiving_job(db, 50)
    early = await _open(sink, job_id)
    await early.write([_envelope(job_id, sensor, range(50))])
    await sink.claim([2])  # another worker takes the partition over
    await jobs.seal(db, job_id, records=50)
    with pytest.raises(Fenced):
        await early.finish(first)
    assert await _rows(db, sensor) == 0 and await _outcomes(db, job_id) == 0


async def test_only_a_job_still_receiving_is_written_early(db: asyncpg.Pool) -> None:
    assert await _sink(db).open_job(await _sealed_job(db, 5)) is None
    assert await _sink(db).open_job(str(uuid.uuid4())) is None


async def test_it_knows_which_keys_it_wrote(db: asyncpg.Pool) -> None:
    sink, sensor = _sink(db), f"early-{uuid.uuid4().hex[:8]}"
    job_id = await _receiving_job(db, 20)
    early = await _open(sink, job_id)
    try:
        await early.write([_envelope(job_id, sensor, range(10))])
        other = str(uuid.uuid4())
        assert early.overlaps([_envelope(other, sensor, range(9, 12))])
        assert not early.overlaps([_envelope(other, sensor, range(10, 12))])
        assert not early.overlaps([_envelope(other, f"{sensor}-x", range(10))])
        # Keys written after the first check are known too.
        await early.write([_envelope(job_id, sensor, range(10, 20))])
        assert early.overlaps([_envelope(other, sensor, range(15, 16))])
    finally:
        await early.discard()


async def test_a_write_of_one_of_its_keys_waits_a_bounded_time(db: asyncpg.Pool) -> None:
    sink, sensor = _sink(db), f"early-{uuid.uuid4().hex[:8]}"
    owner = (await sink.claim([3]))[3]
    job_id = await _receiving_job(db, 10)
    early = await _open(sink, job_id)
    await early.write([_envelope(job_id, sensor, range(10))])
    other = await _sealed_job(db, 1)
    started = time.monotonic()
    with pytest.raises(asyncpg.PostgresError) as refused:
        await sink.write([_envelope(other, sensor, range(3, 4))], owner, lock_timeout_s=0.3)
    assert is_lock_timeout(refused.value) and time.monotonic() - started < 5
    await early.discard()
    # Once it gave way, the same write goes through.
    result = await sink.write([_envelope(other, sensor, range(3, 4))], owner)
    assert result.records == 1 and await _rows(db, sensor) == 1


async def test_a_session_left_idle_is_ended_by_postgresql_and_its_locks_freed(
        db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a frozen worker's early write becomes: its rows must not block the next owner.
    monkeypatch.setattr(sink_module, "EARLY_WRITE_IDLE_S", 1.0)
    sink, sensor = _sink(db), f"early-{uuid.uuid4().hex[:8]}"
    job_id = await _receiving_job(db, 10)
    early = await _open(sink, job_id)
    await early.write([_envelope(job_id, sensor, range(10))])
    await asyncio.sleep(2.5)
    owner = (await sink.claim([4]))[4]
    other = await _sealed_job(db, 10)
    result = await sink.write([_envelope(other, sensor, range(10))], owner, lock_timeout_s=2)
    assert result.records == 10 and await _rows(db, sensor) == 10
    await early.discard()  # a connection PostgreSQL closed: still given back without error


# End to end -----------------------------------------------------------------------------

async def _early_writes(http: aiohttp.ClientSession, stack: Stack) -> dict[str, float]:
    port = stack.env[env_var("worker_metrics_port")]
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as scraper:
        while True:  # the worker may still be starting
            try:
                async with scraper.get(f"http://127.0.0.1:{port}/metrics") as r:
                    text = await r.text()
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "the worker's metrics never answered"
                await asyncio.sleep(0.5)
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^sluice_early_writes_total\{outcome="(\w+)"\} (\S+)$', text, re.MULTILINE)}


async def _worker_consuming(http: aiohttp.ClientSession, tag: str) -> None:
    """A small job run to its end: the worker holds its partitions and reads them."""
    warm = await submit(http, ndjson([reading(f"{tag}-warm", i) for i in range(3)]))
    assert (await wait_terminal(http, warm["job_id"], wait_s=120))["state"] == "completed"


async def _body_in_two_halves(first: bytes, second: bytes | None, pause_s: float) -> AsyncIterator[bytes]:
    """Half the payload, a pause (the worker writes meanwhile), then the rest, or a
    connection cut if ``second`` is None."""
    yield first
    await asyncio.sleep(pause_s)
    if second is None:
        raise ConnectionAbortedError("the client gives up")
    yield second


async def test_a_big_payload_is_written_while_it_arrives(http: aiohttp.ClientSession, stack: Stack,
                                                        db: asyncpg.Pool) -> None:
    tag = f"arrive-{uuid.uuid4().hex[:6]}"
    n = 30_000
    records = [reading(f"{tag}-{i % 97}", i) for i in range(n)]
    await _worker_consuming(http, tag)
    before = await _early_writes(http, stack)
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                         data=_body_in_two_halves(ndjson(records[:n // 2]), ndjson(records[n // 2:]),
                                                  2.0), headers=NDJSON) as r:
        doc = await r.json()
        assert r.status == 202, doc
    job = await wait_terminal(http, doc["job_id"], wait_s=120)
    row = await db.fetchrow("SELECT created_at, accepted_at FROM sluice_jobs WHERE job_id = $1",
                            doc["job_id"])
    assert (row["accepted_at"] - row["created_at"]).total_seconds() > 1.5, "recorded once parsed whole"
    assert job["state"] == "completed" and job["counts"]["succeeded"] == n
    assert await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1",
                             tag + "-%") == n + 3
    assert await _outcomes(db, doc["job_id"]) == n
    after = await _early_writes(http, stack)
    assert after.get("committed", 0) > before.get("committed", 0), after


async def test_a_big_payload_cut_off_midway_leaves_no_row(http: aiohttp.ClientSession, stack: Stack,
                                                          db: asyncpg.Pool) -> None:
    tag = f"cut-{uuid.uuid4().hex[:6]}"
    await _worker_consuming(http, tag)
    started = datetime.now(UTC)
    before = await _early_writes(http, stack)
    body = ndjson([reading(f"{tag}-{i % 97}", i) for i in range(20_000)])
    with pytest.raises(aiohttp.ClientError):
        async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                             data=_body_in_two_halves(body, None, 2.0), headers=NDJSON) as r:
            await r.read()
    deadline = time.monotonic() + 30
    while (job := await db.fetchrow(
            "SELECT job_id, state, reason FROM sluice_jobs WHERE created_at >= $1 AND state = 'failed'"
            " AND reason LIKE 'the client went away%'", started)) is None:
        assert time.monotonic() < deadline, "the cut-off submission's job was not failed"
        await asyncio.sleep(0.2)
    # Its records that reached Kafka end aborted; none reaches the table.
    while await db.fetchval("SELECT count(*) FROM sluice_record_results WHERE job_id = $1"
                            " AND status = 'aborted'", job["job_id"]) == 0:
        assert time.monotonic() < deadline, "no aborted outcome for the cut-off job"
        await asyncio.sleep(0.2)
    assert await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1"
                             " AND sensor_id NOT LIKE '%-warm'", tag + "-%") == 0
    after = await _early_writes(http, stack)
    assert after.get("rolled_back", 0) > before.get("rolled_back", 0), after
    # The stack goes on: a small job right after completes.
    small = await submit(http, ndjson([reading(f"{tag}-after", i) for i in range(5)]))
    assert (await wait_terminal(http, small["job_id"], wait_s=30))["state"] == "completed"


async def test_ledger_maintenance_does_not_queue_behind_an_open_early_write(db: asyncpg.Pool) -> None:
    # Dropping a day partition needs the ledger's strongest lock; queued behind the open
    # transaction it would hold every other worker's write behind itself.
    sink, sensor = _sink(db), f"early-{uuid.uuid4().hex[:8]}"
    old_day = date(2000, 1, 1)
    async with db.acquire() as conn:
        await ledger._make_day(conn, old_day)
    job_id = await _receiving_job(db, 5)
    early = await _open(sink, job_id)
    await early.write([_envelope(job_id, sensor, range(5))])
    try:
        async with db.acquire() as conn:
            started = time.monotonic()
            assert await ledger.maintain(conn, retention_days=7) == []
            assert time.monotonic() - started < 10
    finally:
        await early.discard()
    async with db.acquire() as conn:
        assert ledger.partition_name(old_day) in await ledger.maintain(conn, retention_days=7)
