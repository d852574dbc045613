"""An outcomes ledger of an earlier release (a row per record, day partitions) is moved
into blocks when the new release starts, and reads back the same, record for record."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta

import asyncpg
import pytest

from app.store import ledger, reports
from schemas.sql import JOBS_DDL
from schemas.vocabulary import RecordStatus
from tests.integration.conftest import Stack

# The per-record ledger as the previous release created it (app/store/ledger.py at 33ba945).
PER_RECORD_DDL = """
CREATE TABLE sluice_record_results (
    job_id     text NOT NULL,
    idx        bigint NOT NULL,
    status     text NOT NULL,
    key        text,
    code       text,
    message    text,
    written_on date NOT NULL DEFAULT current_date,
    PRIMARY KEY (job_id, idx, written_on)
) PARTITION BY RANGE (written_on);
CREATE TABLE sluice_record_results_default PARTITION OF sluice_record_results DEFAULT;
"""


@pytest.fixture
async def scratch_db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A database of its own on the suite's server: the migration drops and creates tables."""
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(stack.dsn, database=name)
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()


async def test_a_per_record_ledger_becomes_blocks_that_read_back_the_same(
        scratch_db: asyncpg.Connection) -> None:
    conn = scratch_db
    today: date = await conn.fetchval("SELECT current_date")
    await conn.execute(JOBS_DDL)
    await conn.execute(reports.DDL)
    await conn.execute(PER_RECORD_DDL)
    statuses = list(RecordStatus)
    rows = []
    for job, count, day in (("a", 2500, today - timedelta(days=1)), ("b", 7, today)):
        for i in range(count):
            status = statuses[i % len(statuses)]
            coded = status in (RecordStatus.FAILED,)
            rows.append((job, i * 3, str(status), f'{{"id":{i}}}' if i % 5 else None,
                         "23505" if coded else None, f"m{i}" if coded else None, day))
    await conn.copy_records_to_table(
        "sluice_record_results", records=rows,
        columns=["job_id", "idx", "status", "key", "code", "message", "written_on"])
    before = sorted(tuple(r) for r in await conn.fetch(
        "SELECT job_id, idx, status, key, code, message, written_on FROM sluice_record_results"))

    await ledger.create(conn)
    await ledger.maintain(conn, retention_days=7)

    kind = await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = 'sluice_record_results'::regclass")
    assert kind == "v", "the per-record table is now a view over the blocks"
    after = sorted(tuple(r) for r in await conn.fetch(
        "SELECT job_id, idx, status, key, code, message, written_on FROM sluice_record_results"))
    assert after == before
    blocks = await conn.fetchval("SELECT count(*) FROM sluice_outcome_blocks")
    assert blocks == 8 + 1, "a block per job, day and thousand index values (job a spans 7,500)"
    assert await conn.fetchval("SELECT count(*) FROM sluice_outcome_blocks_default") == 0
    # Starting again finds the view and moves nothing.
    await ledger.create(conn)
    assert await conn.fetchval("SELECT count(*) FROM sluice_outcome_blocks") == blocks
