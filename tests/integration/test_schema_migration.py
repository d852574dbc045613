"""A process starting beside running ones (a rolling restart) sets the schema up without
touching their tables' locks; a new schema version is applied once, giving way to work
that holds its tables. Found on Apache Kafka: a web process restarted mid-job died of a
deadlock between its ``ALTER TABLE ... IF NOT EXISTS`` and the worker's writes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

import app.database as database
from app.database import SCHEMA_VERSION, create_pool, migrate
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from tests.integration.conftest import Stack

TARGETS = load_targets(BUILTIN_TARGETS_DIR)


@pytest.fixture
async def scratch_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database of its own on the suite's server, its schema set up once."""
    name = f"schema_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    pool = await create_pool(stack.dsn.replace("/postgres?", f"/{name}?"), max_size=4)
    try:
        assert await pool.fetchval("SELECT current_database()") == name
        await migrate(pool, TARGETS, results_retention_days=7)
        yield pool
    finally:
        await pool.close()
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()


async def _hold_row_locks(pool: asyncpg.Pool) -> tuple[asyncpg.Connection, asyncpg.Transaction]:
    """A transaction that writes the bookkeeping tables and stays open, as a worker's
    write does while it commits a batch."""
    conn = await pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("INSERT INTO sluice_jobs (job_id, target, operation, source, state)"
                       " VALUES ($1, 'sensor_readings', 'insert', 'http', 'processing')",
                       uuid.uuid4().hex)
    await conn.execute("SELECT * FROM sluice_consumer_positions FOR UPDATE")
    return conn, tx


async def test_a_process_starting_beside_a_busy_worker_does_not_wait_for_its_locks(
        scratch_pool: asyncpg.Pool) -> None:
    conn, tx = await _hold_row_locks(scratch_pool)
    try:
        # The schema is current: nothing is altered, so nothing waits for the open write.
        await asyncio.wait_for(migrate(scratch_pool, TARGETS, results_retention_days=7), 10)
    finally:
        await tx.rollback()
        await scratch_pool.release(conn)


async def test_a_new_schema_version_gives_way_to_running_work_then_is_applied_once(
        scratch_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "DDL_LOCK_WAIT_MS", 200)
    await scratch_pool.execute("DELETE FROM sluice_schema_versions")  # as before an upgrade
    conn, tx = await _hold_row_locks(scratch_pool)
    migration = asyncio.create_task(migrate(scratch_pool, TARGETS, results_retention_days=7))
    try:
        await asyncio.sleep(1.5)
        assert not migration.done(), "the DDL cannot have run while the write held the table"
        # It gives way between attempts, so other work on the table is not queued behind it.
        reader = await scratch_pool.acquire()
        try:
            await reader.execute("SET lock_timeout = 1000")
            await reader.fetchval("SELECT count(*) FROM sluice_jobs")
        finally:
            await scratch_pool.release(reader)
    finally:
        await tx.rollback()
        await scratch_pool.release(conn)
    await asyncio.wait_for(migration, 15)
    assert await scratch_pool.fetch("SELECT version FROM sluice_schema_versions") == [(SCHEMA_VERSION,)]
