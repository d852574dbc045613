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


# The ledger of blocks as the release before failed records were kept created it.
BLOCKS_DDL_BEFORE_RECORDS = """
CREATE TABLE sluice_outcome_blocks (
    job_id     text NOT NULL,
    first_idx  bigint NOT NULL,
    last_idx   bigint NOT NULL,
    written_on date NOT NULL DEFAULT current_date,
    idx        bigint[] NOT NULL,
    statuses   text NOT NULL,
    keys       text[] NOT NULL,
    codes      text[],
    messages   text[],
    failed     integer NOT NULL,
    duplicates integer NOT NULL,
    aborted    integer NOT NULL,
    PRIMARY KEY (job_id, first_idx, written_on)
) PARTITION BY RANGE (written_on);
CREATE TABLE sluice_outcome_blocks_default PARTITION OF sluice_outcome_blocks DEFAULT;
CREATE VIEW sluice_record_results AS
SELECT b.job_id, r.idx, CASE r.letter WHEN 's' THEN 'succeeded' WHEN 'f' THEN 'failed' END AS status,
       r.key, r.code, r.message, b.written_on
FROM sluice_outcome_blocks b
CROSS JOIN LATERAL unnest(b.idx, string_to_array(b.statuses, NULL), b.keys, b.codes, b.messages)
    AS r(idx, letter, key, code, message);
"""


async def test_blocks_written_before_records_were_kept_gain_the_columns_and_list_without_them(
        scratch_db: asyncpg.Connection) -> None:
    from schemas.outcomes import Outcome, blocks_of
    from web.results_stream import render_page

    conn = scratch_db
    await conn.execute(BLOCKS_DDL_BEFORE_RECORDS)
    await conn.execute(
        "INSERT INTO sluice_outcome_blocks (job_id, first_idx, last_idx, idx, statuses, keys,"
        " codes, messages, failed, duplicates, aborted) VALUES ('old', 0, 1, '{0,1}', 'sf',"
        " '{NULL,NULL}', '{NULL,wrong_type}', '{NULL,m}', 1, 0, 0)")

    await ledger.create(conn)

    old = await ledger.outcomes_in(conn, ["old"], [0], [1], date(2000, 1, 1))
    assert [o.record for o in old.values()] == [None, None]
    assert b'"record"' not in render_page(list(old.values()))
    new = blocks_of([Outcome("new", 0, RecordStatus.FAILED, None, "wrong_type", "m", "{", True)])
    await ledger.record(conn, new)
    rows = await conn.fetch("SELECT job_id, idx, status, record, record_truncated"
                            " FROM sluice_record_results ORDER BY job_id, idx")
    assert [tuple(r) for r in rows] == [("new", 0, "failed", "{", True),
                                        ("old", 0, "succeeded", None, None),
                                        ("old", 1, "failed", None, None)]
