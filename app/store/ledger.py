"""The outcomes ledger: one row per block of outcomes in ``sluice_outcome_blocks``.

The ledger is written in the same transaction as the rows, so an envelope delivered
again after a crash finds its records there and is re-published, never re-applied.

A row holds one envelope's outcomes as arrays (indexes, one status letter per record,
keys, and codes, messages and failed records as received only when a record has one;
rows written before records were kept have none): a row per record weighed
more than the target's own row and its index entry, and was most of the database's
work. ``sluice_record_results`` is a view expanding the blocks record by record, for
analysts' SQL. The ledger is partitioned by the day a block was written, and whole days
are dropped once older than the retention: no row-by-row DELETE.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, timedelta
from typing import Any

import asyncpg
import orjson

from schemas.outcomes import LETTER, MAX_BLOCK_SPAN, STATUS_OF, Outcome, OutcomeBlock
from schemas.vocabulary import RecordStatus

log = logging.getLogger(__name__)

TABLE = "sluice_outcome_blocks"
VIEW = "sluice_record_results"
"""Per-record rows, expanded from the blocks (and the per-record table of earlier releases)."""
PARTITION_PREFIX = f"{TABLE}_p"
DAYS_AHEAD = 2
"""Day partitions made in advance, so a write never meets a day without one."""
_MAINTENANCE_LOCK_ID = 0x5E1C_E002
_DAY = re.compile(r"[0-9]{8}")

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
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
    records    text[],
    records_truncated boolean[],
    PRIMARY KEY (job_id, first_idx, written_on)
) PARTITION BY RANGE (written_on);
CREATE TABLE IF NOT EXISTS {TABLE}_default PARTITION OF {TABLE} DEFAULT;
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS records text[],
    ADD COLUMN IF NOT EXISTS records_truncated boolean[];
"""
"""The default partition is a safety net only: maintenance keeps days ahead made.
``failed``, ``duplicates`` and ``aborted`` count the block's statuses, so a listing of one
status skips the blocks without it. ``records`` holds failed records as received (at most
4 KiB each, schemas.received) and ``records_truncated`` which of them were cut; each is
NULL when no record of the block has one, so only failures make the ledger grow. A ledger
of an earlier release gets them added (nullable, no default: no row is rewritten)."""

_COUNTED = {RecordStatus.FAILED: "failed", RecordStatus.DUPLICATE: "duplicates",
            RecordStatus.ABORTED: "aborted"}
"""The statuses a block counts, and their column (succeeded is what the others leave)."""
_FIRST_COLUMNS = ("job_id", "first_idx", "last_idx", "idx", "statuses", "keys", "codes",
                  "messages", *_COUNTED.values())
"""The columns of the first release of blocks, which a per-record ledger is moved into."""
COLUMNS = (*_FIRST_COLUMNS, "records", "records_truncated")


def _status_case(column: str) -> str:
    """SQL turning a status letter into its name."""
    whens = " ".join(f"WHEN '{letter}' THEN '{status}'" for letter, status in STATUS_OF.items())
    return f"CASE {column} {whens} END"


def _letter_case(column: str) -> str:
    """SQL turning a status name into its letter."""
    whens = " ".join(f"WHEN '{status}' THEN '{letter}'" for status, letter in LETTER.items())
    return f"CASE {column} {whens} END"


VIEW_DDL = f"""
CREATE OR REPLACE VIEW {VIEW} AS
SELECT b.job_id, r.idx, {_status_case('r.letter')} AS status, r.key, r.code, r.message,
       b.written_on, r.record,
       CASE WHEN r.record IS NOT NULL THEN coalesce(r.cut, false) END AS record_truncated
FROM {TABLE} b
CROSS JOIN LATERAL unnest(b.idx, string_to_array(b.statuses, NULL), b.keys,
                          coalesce(b.codes, array_fill(NULL::text, ARRAY[cardinality(b.idx)])),
                          coalesce(b.messages, array_fill(NULL::text, ARRAY[cardinality(b.idx)])),
                          coalesce(b.records, array_fill(NULL::text, ARRAY[cardinality(b.idx)])),
                          coalesce(b.records_truncated,
                                   array_fill(NULL::boolean, ARRAY[cardinality(b.idx)])))
    AS r(idx, letter, key, code, message, record, cut)
"""
"""``record`` and ``record_truncated`` come last: CREATE OR REPLACE VIEW may only add columns
at the end of a view made by an earlier release."""

_MIGRATE_PER_RECORD = f"""
INSERT INTO {TABLE} ({', '.join(_FIRST_COLUMNS)}, written_on)
SELECT job_id, min(idx), max(idx), array_agg(idx ORDER BY idx),
       string_agg({_letter_case('status')}, '' ORDER BY idx),
       array_agg(key ORDER BY idx), array_agg(code ORDER BY idx), array_agg(message ORDER BY idx),
       {', '.join(f"count(*) FILTER (WHERE status = '{status}')" for status in _COUNTED)},
       written_on
FROM {{old}} GROUP BY job_id, written_on, idx / 1000
"""
"""Per-record outcomes of an earlier release, a block per job, day and thousand indexes."""


MAINTENANCE_LOCK_WAIT_MS = 2000
"""How long maintenance's DDL waits for the ledger's lock before it is put off."""


def partition_name(day: date) -> str:
    """The partition holding blocks written on ``day``."""
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


async def _make_day(conn: asyncpg.Connection, day: date) -> None:
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {TABLE} "
        f"FOR VALUES FROM ('{day:%Y-%m-%d}') TO ('{day + timedelta(days=1):%Y-%m-%d}')")


async def create(conn: asyncpg.Connection) -> None:
    """Create the ledger and its view; move a per-record ledger of an earlier release into it."""
    await conn.execute(DDL)
    kind = await conn.fetchval(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)", VIEW)
    if kind in ("r", "p"):
        days = [r["day"] for r in await conn.fetch(f"SELECT DISTINCT written_on AS day FROM {VIEW}")]
        for day in days:  # before the rows, so that none lands in the default partition
            await _make_day(conn, day)
        moved = await conn.execute(_MIGRATE_PER_RECORD.format(old=VIEW))
        await conn.execute(f"DROP TABLE {VIEW} CASCADE")
        log.info("per-record outcomes ledger moved into blocks", extra={"result": moved})
    await conn.execute(VIEW_DDL)


async def maintain(conn: asyncpg.Connection, retention_days: int) -> list[str]:
    """Make the coming days' partitions and drop those past the retention; returns dropped ones."""
    try:
        dropped = await _maintain(conn, retention_days)
    except asyncpg.LockNotAvailableError:
        # A long transaction (a big job written while received) holds the ledger: waiting
        # in the lock queue would hold every write behind this one. The next run makes it.
        log.warning("ledger maintenance put off: the ledger is in use by a long transaction")
        return []
    if dropped:
        log.info("outcomes past retention dropped", extra={"partitions": dropped})
    return dropped


async def _maintain(conn: asyncpg.Connection, retention_days: int) -> list[str]:
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _MAINTENANCE_LOCK_ID):
            return []  # another process is at it
        await conn.execute(f"SET LOCAL lock_timeout = {MAINTENANCE_LOCK_WAIT_MS}")
        today: date = await conn.fetchval("SELECT current_date")
        existing = {r["name"] for r in await conn.fetch(
            "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass($1)", TABLE)}
        for ahead in range(DAYS_AHEAD + 1):
            day = today + timedelta(days=ahead)
            if partition_name(day) not in existing:
                await _make_day(conn, day)
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
    return dropped


async def record(conn: asyncpg.Connection, blocks: Iterable[OutcomeBlock]) -> None:
    """Add blocks to the ledger (binary COPY, one row per block)."""
    rows = [
        (b.job_id, b.first, b.last, b.indexes, b.statuses, b.keys, b.codes, b.messages,
         *(b.count(status) for status in _COUNTED), b.records, b.records_truncated)
        for b in blocks if len(b)
    ]
    if rows:
        await conn.copy_records_to_table(TABLE, records=rows, columns=list(COLUMNS))


async def written_firsts(
    conn: asyncpg.Connection, job_ids: Sequence[str], firsts: Sequence[int], since: date
) -> set[tuple[str, int]]:
    """Which (job, index) pairs start a block written on ``since`` or later: one index probe each.

    An envelope from the web is written whole, so a block starting at its first index
    says it was written; nothing else needs reading for an envelope not found.
    """
    if not job_ids:
        return set()
    rows = await conn.fetch(
        "SELECT p.job_id, p.first FROM unnest($1::text[], $2::bigint[]) AS p(job_id, first)"
        f" WHERE EXISTS (SELECT FROM {TABLE} b WHERE b.job_id = p.job_id"
        " AND b.first_idx = p.first AND b.written_on >= $3)",
        job_ids, firsts, since,
    )
    return {(r["job_id"], r["first"]) for r in rows}


async def outcomes_in(
    conn: asyncpg.Connection, job_ids: Sequence[str], lows: Sequence[int], highs: Sequence[int],
    since: date,
) -> dict[tuple[str, int], Outcome]:
    """Outcomes written on ``since`` or later for indexes lowᵢ..highᵢ of job job_idᵢ.

    A block starts at most MAX_BLOCK_SPAN before any index it holds, so only blocks
    starting in that window are read.
    """
    if not job_ids:
        return {}
    rows = await conn.fetch(
        "SELECT DISTINCT ON (b.job_id, b.first_idx, b.written_on) b.job_id, b.idx, b.statuses,"
        " b.keys, b.codes, b.messages, b.records, b.records_truncated"
        " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(job_id, lo, hi)"
        f" JOIN {TABLE} b ON b.job_id = r.job_id AND b.first_idx BETWEEN r.lo - $5 AND r.hi"
        " AND b.last_idx >= r.lo AND b.written_on >= $4",
        job_ids, lows, highs, since, MAX_BLOCK_SPAN,
    )
    wanted = list(zip(job_ids, lows, highs, strict=True))
    found: dict[tuple[str, int], Outcome] = {}
    for row in rows:
        ranges = [(lo, hi) for job, lo, hi in wanted if job == row["job_id"]]
        for outcome in _block_of(row).outcomes():
            if any(lo <= outcome.index <= hi for lo, hi in ranges):
                found[(outcome.job_id, outcome.index)] = outcome
    return found


def _index(outcome: Outcome) -> int:
    return outcome.index


def _block_of(row: asyncpg.Record) -> OutcomeBlock:
    return OutcomeBlock(row["job_id"], list(row["idx"]), row["statuses"], list(row["keys"]),
                        list(row["codes"]) if row["codes"] is not None else None,
                        list(row["messages"]) if row["messages"] is not None else None,
                        list(row["records"]) if row["records"] is not None else None,
                        list(row["records_truncated"])
                        if row["records_truncated"] is not None else None)


BLOCKS_PER_PAGE = 8
"""Blocks read per query of a results listing: one short query, a page of at most a few
thousand outcomes (a block holds up to SLUICE_BATCH_SIZE), and about the most a listing
holds while it waits on its client. Failed records' texts add at most one envelope's
worth per block: the web packs at most 256 K characters of them in an envelope, and the
worker's re-serialised rows are about the size of the envelope they came in."""


async def iter_outcomes(
    pool: asyncpg.Pool, job_id: str, status: RecordStatus | None, *,
    blocks_per_page: int = BLOCKS_PER_PAGE,
) -> AsyncIterator[list[Outcome]]:
    """A job's per-record outcomes in index order, a page at a time.

    Blocks are read in the order of their first index, a page of blocks per query on a
    pooled connection released before the page is yielded: whoever consumes the pages
    (a client reading slowly, or not at all) holds no connection meanwhile. An outcome
    is yielded once no block still unread can hold a lower index: blocks not read yet
    start at or after the last block read. There is no snapshot across pages: a job
    still running may list outcomes written during the listing; none twice, none out of order.
    """
    select = ("SELECT job_id, first_idx, written_on, idx, statuses, keys, codes, messages,"
              f" records, records_truncated FROM {TABLE} WHERE job_id = $1")
    if status is not None and status in _COUNTED:
        select += f" AND {_COUNTED[status]} > 0"
    held: list[Outcome] = []  # read but not yet yielded, in index order
    after: tuple[int, date] | None = None
    while True:
        async with pool.acquire() as conn:
            if after is None:
                rows = await conn.fetch(
                    f"{select} ORDER BY first_idx, written_on LIMIT $2", job_id, blocks_per_page)
            else:
                rows = await conn.fetch(
                    f"{select} AND (first_idx, written_on) > ($3, $4)"
                    " ORDER BY first_idx, written_on LIMIT $2", job_id, blocks_per_page, *after)
        for row in rows:
            held.extend(o for o in _block_of(row).outcomes() if status is None or o.status == status)
        held.sort(key=_index)  # runs already in order: a merge
        done = len(rows) < blocks_per_page
        cut = len(held) if done else bisect.bisect_left(held, rows[-1]["first_idx"], key=_index)
        if cut:
            yield held[:cut]
            del held[:cut]
        if done:
            return
        after = (rows[-1]["first_idx"], rows[-1]["written_on"])


async def failures_by_code(pool: asyncpg.Pool, job_id: str, examples: int) -> list[dict[str, Any]]:
    """A job's failed records by code, most frequent first: each code's count and its
    first ``examples`` failures (index, message, the record as received). Reads only the
    job's blocks that hold a failure."""
    rows = await pool.fetch(
        f"""
        SELECT r.code, count(*) AS records,
               (array_agg(jsonb_build_object('index', r.idx, 'message', r.message,
                                             'record', r.record) ORDER BY r.idx))[1:$3] AS examples
        FROM {TABLE} b
        CROSS JOIN LATERAL unnest(b.idx, string_to_array(b.statuses, NULL),
                                  coalesce(b.codes, array_fill(NULL::text, ARRAY[cardinality(b.idx)])),
                                  coalesce(b.messages, array_fill(NULL::text, ARRAY[cardinality(b.idx)])),
                                  coalesce(b.records, array_fill(NULL::text, ARRAY[cardinality(b.idx)])))
            AS r(idx, letter, code, message, record)
        WHERE b.job_id = $1 AND b.{_COUNTED[RecordStatus.FAILED]} > 0 AND r.letter = $2
        GROUP BY r.code ORDER BY records DESC, r.code
        """, job_id, LETTER[RecordStatus.FAILED], examples)
    return [{"code": row["code"], "records": row["records"],
             "examples": [orjson.loads(e) for e in row["examples"]]} for row in rows]
