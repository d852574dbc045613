"""Inserts of distinct keys take the short paths (copied straight in; or, after a chunk
the table refused, judged over arrays without staging). Whichever path a chunk takes,
every record's outcome and the table's rows are those the write semantics give."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from app.store.positions import PartitionPositions
from app.store.sink import PostgresSink
from schemas.envelope import Envelope, Item
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from schemas.vocabulary import RecordStatus
from tests.integration.helpers import BASE_MS
from tests.integration.test_partition_ownership import _sealed_job

AT = datetime.fromtimestamp(BASE_MS / 1000, UTC)
CHECK = "sluice_test_paths_value"


def _sink(db: asyncpg.Pool) -> tuple[PostgresSink, PartitionPositions]:
    positions = PartitionPositions(f"paths-{uuid.uuid4().hex[:8]}", "sluice.records")
    return PostgresSink(db, load_targets(BUILTIN_TARGETS_DIR), positions=positions,
                        topic="sluice.records"), positions


@pytest.fixture
async def value_check(db: asyncpg.Pool) -> AsyncIterator[None]:
    """A CHECK on the shared target, for this test only (values from -1000 up are allowed)."""
    await db.execute(f"ALTER TABLE sensor_readings ADD CONSTRAINT {CHECK} CHECK (value > -1000) NOT VALID")
    try:
        yield
    finally:
        await db.execute(f"ALTER TABLE sensor_readings DROP CONSTRAINT {CHECK}")


def _dirty_chunk(sensor: str, job_id: str) -> tuple[Envelope, dict[int, tuple[RecordStatus, str | None]]]:
    """Ten inserts: 0-4 new, 5 the same as a row already there (duplicate), 6 another value
    for a key already there (23505), 7 refused by the CHECK (23514), 8-9 new."""
    items = [Item(i, (sensor, float(i), AT + timedelta(seconds=i))) for i in range(10)]
    items[7] = Item(7, (sensor, -5000.0, AT + timedelta(seconds=7)))
    expected = {i: (RecordStatus.SUCCEEDED, None) for i in range(10)}
    expected |= {5: (RecordStatus.DUPLICATE, None), 6: (RecordStatus.FAILED, "23505"),
                 7: (RecordStatus.FAILED, "23514")}
    return Envelope(job_id, "sensor_readings", "insert", items), expected


async def _existing(db: asyncpg.Pool, sensor: str) -> None:
    await db.executemany(
        "INSERT INTO sensor_readings (sensor_id, value, sampled_at, _sluice_tenant)"
        " VALUES ($1, $2, $3, 'dev')",
        [(sensor, 5.0, AT + timedelta(seconds=5)), (sensor, 99.0, AT + timedelta(seconds=6))])


async def _write_and_check(db: asyncpg.Pool, sink: PostgresSink, positions: PartitionPositions,
                           sensor: str) -> None:
    job_id = await _sealed_job(db, 10)
    envelope, expected = _dirty_chunk(sensor, job_id)
    owner = (await sink.claim([3]))[3]
    result = await sink.write([envelope], owner)
    got = {o.index: (o.status, o.code) for o in result.outcomes()}
    assert got == expected
    rows = {r["sampled_at"]: r["value"] for r in await db.fetch(
        "SELECT sampled_at, value FROM sensor_readings WHERE sensor_id = $1", sensor)}
    assert rows == {AT + timedelta(seconds=i): float(i) if i != 6 else 99.0
                    for i in range(10) if i != 7}


@pytest.mark.parametrize("direct_first", [True, False])
async def test_a_dirty_chunk_of_inserts_gets_the_semantics_outcomes_on_either_short_path(
        db: asyncpg.Pool, value_check: None, direct_first: bool) -> None:
    sink, positions = _sink(db)
    if not direct_first:
        sink.writer.direct.miss("sensor_readings")  # as after an earlier dirty chunk: judged over arrays
    sensor = f"paths-{uuid.uuid4().hex[:6]}"
    await _existing(db, sensor)
    await _write_and_check(db, sink, positions, sensor)


async def test_a_rule_added_after_it_was_read_is_still_isolated(db: asyncpg.Pool) -> None:
    """The array path knows the rules as last read; one added since then refuses its COPY,
    and the general path finds the refused record."""
    sink, positions = _sink(db)
    sink.writer.direct.miss("sensor_readings")
    warm = f"paths-{uuid.uuid4().hex[:6]}"
    job_id = await _sealed_job(db, 1)
    owner = (await sink.claim([3]))[3]
    await sink.write([Envelope(job_id, "sensor_readings", "insert", [Item(0, (warm, 1.0, AT))])], owner)
    await db.execute(f"ALTER TABLE sensor_readings ADD CONSTRAINT {CHECK} CHECK (value > -1000) NOT VALID")
    try:
        sensor = f"paths-{uuid.uuid4().hex[:6]}"
        await _existing(db, sensor)
        await _write_and_check(db, sink, positions, sensor)
    finally:
        await db.execute(f"ALTER TABLE sensor_readings DROP CONSTRAINT {CHECK}")


@pytest.mark.parametrize("direct_first", [True, False])
async def test_a_chunk_whose_every_record_failed_validation_writes_only_outcomes(
        db: asyncpg.Pool, direct_first: bool) -> None:
    """Nothing for the table (every record invalid), whichever path the target is on:
    the records fail with their own codes, at once, not after retries."""
    sink, _ = _sink(db)
    if not direct_first:
        sink.writer.direct.miss("sensor_readings")
    job_id = await _sealed_job(db, 2)
    owner = (await sink.claim([3]))[3]
    envelope = Envelope(job_id, "sensor_readings", "insert",
                        [Item(0, None, "malformed_record", "m"), Item(1, None, "wrong_type", "w")])
    result = await sink.write([envelope], owner)
    assert [(o.index, o.status, o.code) for o in result.outcomes()] == [
        (0, RecordStatus.FAILED, "malformed_record"), (1, RecordStatus.FAILED, "wrong_type")]
