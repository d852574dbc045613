"""The outcomes ledger: one row per record in ``sluice_record_results``, kept for a retention.

The ledger is written in the same transaction as the rows, so an envelope delivered
again after a crash finds its records there and is re-published, never re-applied. It
is partitioned by the day an outcome was written, and whole days are dropped once older
than the retention: no row-by-row DELETE, and its size is bounded by the retention.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any, NamedTuple

import asyncpg

log = logging.getLogger(__name__)

TABLE = "sluice_record_results"
PARTITION_PREFIX = f"{TABLE}_p"
DAYS_AHEAD = 2
"""Day partitions made in advance, so a write never meets a day without one."""
_MAINTENANCE_LOCK_ID = 0x5E1C_E002
_DAY = re.compile(r"[0-9]{8}")

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    job_id     text NOT NULL,
    idx        bigint NOT NULL,
    status     text NOT NULL,
    key        text,
    code       text,
    message    text,
    written_on date NOT NULL DEFAULT current_date,
    PRIMARY KEY (job_id, idx, written_on)
) PARTITION BY RANGE (written_on);
CREATE TABLE IF NOT EXISTS {TABLE}_default PARTITION OF {TABLE} DEFAULT;
"""
"""The default partition is a safety net only: maintenance keeps days ahead made."""

COLUMNS = ("job_id", "idx", "status", "key", "code", "message")


class Outcome(NamedTuple):
    """What happened to one record (a named tuple: one is made per record)."""

    job_id: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing here uses
    status: str
    key: str | None
    code: str | None = None
    message: str | None = None


def partition_name(day: date) -> str:
    """The partition holding outcomes written on ``day``."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def day_of(partition: str) -> date | None:
    """The day a partition made by ``partition_name`` holds; None for any other table."""
    suffix = partition.removeprefix(PARTITION_PREFIX)
    if suffix == partition or _DAY.fullmatch(suffix) is None:
        return None
    try:
        return date(int(suffix[:4]), int(suffix[4:6]), int(suffix[6:]))
    except ValueError:  # eight digits that are no date
        return None


def expired(partitions: Iterable[str], today: date, retention_days: int) -> list[str]:
    """Day partitions wholly older than the retention."""
    horizon = today - timedelta(days=retention_days)
    return sorted(p for p in partitions if (d := day_of(p)) is not None and d < horizon)


async def create(conn: asyncpg.Connection) -> None:
    """Create the ledger, turning a ledger from before partitioning into its first partition."""
    kind = await conn.fetchval(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)", TABLE)
    if kind == "r":
        # An unpartitioned ledger of an earlier release: keep its rows for one retention,
        # as the partition of the day before this upgrade.
        today: date = await conn.fetchval("SELECT current_date")
        legacy = partition_name(today - timedelta(days=1))
        await conn.execute(f"ALTER TABLE {TABLE} RENAME TO {legacy}")
        await conn.execute(f"ALTER TABLE {legacy} RENAME CONSTRAINT {TABLE}_pkey TO {legacy}_pkey")
        await conn.execute(
            f"ALTER TABLE {legacy} ADD COLUMN written_on date NOT NULL "
            f"DEFAULT '{today - timedelta(days=1):%Y-%m-%d}'")
        await conn.execute(DDL)
        await conn.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {legacy} "
                           f"FOR VALUES FROM (MINVALUE) TO ('{today:%Y-%m-%d}')")
        log.info("outcomes ledger partitioned; earlier outcomes kept in %s", legacy)
    else:
        await conn.execute(DDL)


async def maintain(conn: asyncpg.Connection, retention_days: int) -> list[str]:
    """Make the coming days' partitions and drop those past the retention; returns dropped ones."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _MAINTENANCE_LOCK_ID):
            return []  # another process is at it
        today: date = await conn.fetchval("SELECT current_date")
        existing = {r["name"] for r in await conn.fetch(
            "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass($1)", TABLE)}
        for ahead in range(DAYS_AHEAD + 1):
            day = today + timedelta(days=ahead)
            name = partition_name(day)
            if name not in existing:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {TABLE} "
                    f"FOR VALUES FROM ('{day:%Y-%m-%d}') TO ('{day + timedelta(days=1):%Y-%m-%d}')")
        dropped = expired(existing, today, retention_days)
        for name in dropped:
            await conn.execute(f"DROP TABLE IF EXISTS {name}")
        horizon = today - timedelta(days=retention_days)
        await conn.execute(f"DELETE FROM {TABLE}_default WHERE written_on < $1", horizon)
        # A finished job's outcomes are gone with its days; the job row and its sent
        # report go with them.
        await conn.execute(
            "DELETE FROM sluice_jobs WHERE completed_at < $1::date", horizon)
        await conn.execute(
            "DELETE FROM sluice_report_outbox WHERE sent_at < $1::date", horizon)
    if dropped:
        log.info("outcomes past retention dropped", extra={"partitions": dropped})
    return dropped


async def already_written(
    conn: asyncpg.Connection, job_ids: Sequence[str], indexes: Sequence[int], since: date
) -> dict[tuple[str, int], Outcome]:
    """Outcomes already in the ledger for these (job, index) pairs, written on ``since`` or later."""
    if not job_ids:
        return {}
    rows = await conn.fetch(
        # LATERAL: one index probe per record, never a scan of the ledger.
        "SELECT r.job_id, r.idx, r.status, r.key, r.code, r.message"
        " FROM unnest($1::text[], $2::bigint[]) AS b(job_id, idx) CROSS JOIN LATERAL ("
        f" SELECT * FROM {TABLE} r WHERE r.job_id = b.job_id AND r.idx = b.idx"
        " AND r.written_on >= $3 LIMIT 1) r",
        job_ids, indexes, since,
    )
    return {(r["job_id"], r["idx"]): Outcome(*r) for r in rows}


async def record(conn: asyncpg.Connection, outcomes: Iterable[Outcome]) -> None:
    """Add outcomes to the ledger (binary COPY)."""
    records: list[Any] = list(outcomes)
    if records:
        await conn.copy_records_to_table(TABLE, records=records, columns=list(COLUMNS))
