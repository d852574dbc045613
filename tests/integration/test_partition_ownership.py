"""Partition ownership in the real PostgreSQL: a claim fences the previous owner, whose
writes and position moves are then refused before they change anything."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from app.store import jobs
from app.store.positions import Fence, Fenced, PartitionPositions
from app.store.sink import PostgresSink
from schemas.envelope import Envelope, Item
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from tests.integration.helpers import BASE_MS


async def _sealed_job(db: asyncpg.Pool, records: int) -> str:
    job_id = str(uuid.uuid4())
    await jobs.create_receiving(db, job_id, "sensor_readings", "insert", records,
                                seal_within_s=30, tenant="dev", principal="dev")
    await jobs.seal(db, job_id)
    return job_id


def _envelope(job_id: str, sensor: str, n: int) -> Envelope:
    at = datetime.fromtimestamp(BASE_MS / 1000, UTC)
    return Envelope(job_id, "sensor_readings", "insert",
                    [Item(i, (sensor, float(i), at + timedelta(seconds=i))) for i in range(n)])


@pytest.fixture
def sinks(db: asyncpg.Pool) -> tuple[PostgresSink, PartitionPositions]:
    positions = PartitionPositions(f"ownership-{uuid.uuid4().hex[:8]}", "sluice.records")
    return PostgresSink(db, load_targets(BUILTIN_TARGETS_DIR), positions=positions,
                        topic="sluice.records"), positions


async def test_a_stale_owner_is_refused_before_it_writes(
    db: asyncpg.Pool, sinks: tuple[PostgresSink, PartitionPositions]
) -> None:
    sink, positions = sinks
    first = (await sink.claim([2]))[2]
    assert first.next_offset is None  # nothing applied from it yet
    second = (await sink.claim([2]))[2]
    assert second.epoch > first.epoch
    sensor = f"fenced-{uuid.uuid4().hex[:6]}"
    job_id = await _sealed_job(db, 5)
    with pytest.raises(Fenced):
        await sink.write([_envelope(job_id, sensor, 5)], first)
    with pytest.raises(Fenced):
        await sink.advance(Fence(2, first.epoch, 99))
    assert await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", sensor) == 0
    assert await db.fetchval("SELECT count(*) FROM sluice_record_results WHERE job_id = $1",
                             job_id) == 0
    assert await positions.read(db, [2]) == {}
    # The owner writes, and its position only ever moves forward.
    result = await sink.write([_envelope(job_id, sensor, 5)], second)
    assert result.records == 5
    await sink.advance(Fence(2, second.epoch, 7))
    await sink.advance(Fence(2, second.epoch, 3))
    assert await positions.read(db, [2]) == {2: 7}
    # A new owner continues where the last one got to.
    assert (await sink.claim([2]))[2].next_offset == 7


async def test_a_claim_waits_for_a_write_under_way(
    db: asyncpg.Pool, sinks: tuple[PostgresSink, PartitionPositions]
) -> None:
    sink, positions = sinks
    owner = (await sink.claim([1]))[1]
    async with db.acquire() as conn, conn.transaction():
        await positions.hold(conn, 1, owner.epoch)  # what every write does first
        takeover = asyncio.create_task(positions.claim(db, [1]))
        await asyncio.sleep(0.5)
        assert not takeover.done(), "a new owner claimed the partition in the middle of a write"
    assert (await takeover)[1].epoch == owner.epoch + 1


async def test_a_position_counted_in_another_incarnation_of_the_topic_starts_over(
    db: asyncpg.Pool, sinks: tuple[PostgresSink, PartitionPositions]
) -> None:
    sink, positions = sinks
    owner = (await sink.claim([0, 1], "topic-a"))[0]
    await sink.advance(Fence(0, owner.epoch, 7))
    claims = await sink.claim([0, 1], "topic-a")
    assert (claims[0].next_offset, claims[1].next_offset) == (7, None)
    # The ID is unknown (the broker did not say): the position is kept.
    assert (await sink.claim([0], None))[0].next_offset == 7
    # The topic was deleted and created again: its offsets start over, and so does the
    # position, or the new topic's records below 7 would be taken for applied ones.
    again = (await sink.claim([0], "topic-b"))[0]
    assert again.next_offset is None and again.epoch > owner.epoch
    await sink.advance(Fence(0, again.epoch, 2))
    assert (await sink.claim([0], "topic-b"))[0].next_offset == 2
    assert await positions.read(db, [0]) == {0: 2}
