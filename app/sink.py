"""The one PostgreSQL write boundary: a batch of envelopes in, one transaction, outcomes out.

Exactly-once effects from at-least-once delivery: every record's outcome is written to
``sluice_record_results`` in the same transaction as the row itself, so an envelope
delivered again after a crash finds its records already in that ledger and skips them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from app.errors import SluiceError
from schemas.envelope import Envelope
from schemas.identity import key_json_encoder, record_hash
from schemas.sql import TargetStatements, statements_for
from schemas.targets import Target

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
FAILED = "failed"
DUPLICATE = "duplicate"

ABORTED = "aborted"

TERMINAL_STATES = frozenset({"completed", "completed_with_errors", "failed", "aborted"})
HALTED_STATES = frozenset({"failed", "aborted"})
"""Jobs whose records still arriving are recorded as aborted instead of applied."""
_MISSING = "missing"
"""A job with no row: its submission was refused before it was recorded; ignore its records."""

# SQLSTATE classes that mean "this row is bad", as opposed to "the database is unwell":
# 22 data exception, 23 integrity constraint violation.
_ROW_ERROR_CLASSES = ("22", "23")


class _RowsNeedIsolating(SluiceError):
    """The optimistic write met a row the database refused: redo the batch row by row."""


class JobNotSealed(SluiceError):
    """A job's records are still being produced; its envelopes must wait."""


class Outcome(NamedTuple):
    """What happened to one record (a named tuple: one is made per record)."""

    job_id: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing here uses
    status: str
    key: str | None
    code: str | None = None
    message: str | None = None


@dataclass(slots=True)
class BatchResult:
    """What one committed batch produced, for the agent to publish after the commit."""

    outcomes: list[Outcome] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Job snapshots after this batch's counts were added."""
    applied_hashes: list[tuple[Envelope, bytes]] = field(default_factory=list)
    """Hashes of records applied by this batch (with their envelope), for the dedup table."""
    replayed: list[Outcome] = field(default_factory=list)
    """Outcomes found already written: a redelivered envelope; published again."""


@dataclass(slots=True)
class _Pending:
    """A valid record waiting for its write."""

    envelope: Envelope
    index: int
    row: tuple[Any, ...]
    digest: bytes
    key: tuple[Any, ...]


def generations(pending: Sequence[_Pending]) -> list[list[_Pending]]:
    """Split records so that no key appears twice in one statement, order kept per key.

    ``ON CONFLICT DO UPDATE`` cannot touch one row twice in a statement, and two writes
    of one key in one payload must apply in payload order: the n-th record of a key
    goes to the n-th generation.
    """
    seen: dict[tuple[Any, ...], int] = defaultdict(int)
    result: list[list[_Pending]] = []
    for record in pending:
        n = seen[record.key]
        seen[record.key] = n + 1
        if n == len(result):
            result.append([])
        result[n].append(record)
    return result


class PostgresSink:
    """Writes batches of envelopes into their target tables."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        targets: dict[str, Target],
        *,
        receiving_grace: timedelta,
        consumer_group: str,
        topic: str,
    ) -> None:
        self._pool = pool
        self._group = consumer_group
        self._topic = topic
        self._targets = targets
        self._statements = {name: statements_for(t) for name, t in targets.items()}
        self._receiving_grace = receiving_grace

    async def positions(self, partitions: Iterable[int]) -> dict[int, int]:
        """The next offset to write per partition, as committed with the rows (absent: none yet)."""
        rows = await self._pool.fetch(
            "SELECT partition, next_offset FROM sluice_consumer_positions"
            " WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3::int[])",
            self._group, self._topic, list(partitions),
        )
        return {r["partition"]: r["next_offset"] for r in rows}

    async def advance(self, positions: Mapping[int, int]) -> None:
        """Move positions past envelopes that had nothing to write."""
        await self._pool.execute(
            _ADVANCE_POSITIONS, self._group, self._topic, list(positions), list(positions.values())
        )

    async def write(
        self,
        envelopes: Sequence[Envelope],
        seen_recently: Callable[[bytes], bool],
        positions: Mapping[int, int],
    ) -> BatchResult:
        """Apply every record of the envelopes in one transaction.

        ``seen_recently`` says whether a record hash was applied within the
        deduplication window; ``positions`` is where each partition continues once this
        batch is written, committed in the same transaction. Raises JobNotSealed if a
        job is still being received.

        The first attempt writes each set of rows in one statement, without savepoints.
        Only if the database rejects a row (or an insert meets an existing key) is the
        transaction run again, isolating rows under savepoints to say which one failed.
        """
        try:
            return await self._write_transaction(envelopes, seen_recently, positions,
                                                 careful=False)
        except _RowsNeedIsolating:
            return await self._write_transaction(envelopes, seen_recently, positions,
                                                 careful=True)

    async def _write_transaction(
        self,
        envelopes: Sequence[Envelope],
        seen_recently: Callable[[bytes], bool],
        positions: Mapping[int, int],
        *,
        careful: bool,
    ) -> BatchResult:
        async with self._pool.acquire() as conn, conn.transaction():
            states = await self._job_states(conn, envelopes)
            live = [e for e in envelopes if states[e.job_id] != _MISSING]
            # Every envelope is looked up, not only those below the committed position:
            # the same records can come back at a new offset (a producer's retry, the
            # forwarder re-forwarding after a crash).
            done = await self._already_written(conn, live)
            result = BatchResult(replayed=list(done.values()))
            pending: dict[tuple[str, str], list[_Pending]] = defaultdict(list)
            for envelope in live:
                target = self._targets[envelope.target]
                halted = states[envelope.job_id] in HALTED_STATES
                key_json = key_json_encoder(target)
                key_of = target.key_of
                job_id = envelope.job_id
                name, operation = envelope.target, envelope.operation
                group = pending[(name, operation)]
                for item in envelope.items:
                    row = item.row
                    if done:
                        earlier = done.get((job_id, item.index))
                        if earlier is not None:
                            if earlier.status == SUCCEEDED and row is not None:
                                # Applied before a crash: its hash may never have reached the table.
                                result.applied_hashes.append(
                                    (envelope, record_hash(name, operation, row)))
                            continue
                    if halted:
                        result.outcomes.append(Outcome(
                            job_id, item.index, ABORTED, key_json(row) if row is not None else None,
                        ))
                    elif row is None:
                        result.outcomes.append(
                            Outcome(job_id, item.index, FAILED, None, item.error_code, item.error_message)
                        )
                    else:
                        group.append(_Pending(envelope, item.index, row,
                                              record_hash(name, operation, row), key_of(row)))
            for (target_name, operation), records in sorted(pending.items()):
                if records:
                    await self._apply(conn, target_name, operation, records, seen_recently, result,
                                      careful=careful)
            await self._record_outcomes(conn, result.outcomes)
            result.jobs = await self._update_jobs(conn, live, result.outcomes)
            await conn.execute(
                _ADVANCE_POSITIONS, self._group, self._topic,
                list(positions), list(positions.values()),
            )
            return result

    async def _job_states(
        self, conn: asyncpg.Connection, envelopes: Sequence[Envelope]
    ) -> dict[str, str]:
        stream_jobs = {
            e.job_id: e for e in envelopes if e.source_topic is not None
        }
        for job_id, e in sorted(stream_jobs.items()):
            await conn.execute(
                "INSERT INTO sluice_jobs (job_id, target, operation, source, state, accepted_at)"
                " VALUES ($1, $2, $3, 'kafka', 'processing', now()) ON CONFLICT DO NOTHING",
                job_id, e.target, e.operation,
            )
        rows = await conn.fetch(
            "SELECT job_id, state, created_at FROM sluice_jobs WHERE job_id = ANY($1::text[])",
            list({e.job_id for e in envelopes}),
        )
        states: dict[str, str] = {}
        now = datetime.now(UTC)
        for row in rows:
            state = row["state"]
            if state == "receiving":
                if now - row["created_at"] < self._receiving_grace:
                    raise JobNotSealed(row["job_id"])
                # Its submitter died between producing and sealing: nothing of it is applied.
                await conn.execute(
                    "UPDATE sluice_jobs SET state = 'failed', completed_at = now(), updated_at = now(),"
                    " reason = 'submission did not complete' WHERE job_id = $1 AND state = 'receiving'",
                    row["job_id"],
                )
                state = "failed"
            states[row["job_id"]] = state
        for e in envelopes:
            states.setdefault(e.job_id, _MISSING)
        return states

    @staticmethod
    async def _already_written(
        conn: asyncpg.Connection, envelopes: Sequence[Envelope]
    ) -> dict[tuple[str, int], Outcome]:
        job_ids: list[str] = []
        indexes: list[int] = []
        for e in envelopes:
            for item in e.items:
                job_ids.append(e.job_id)
                indexes.append(item.index)
        if not job_ids:
            return {}
        rows = await conn.fetch(
            "SELECT r.job_id, r.idx, r.status, r.key, r.code, r.message FROM sluice_record_results r"
            " JOIN unnest($1::text[], $2::bigint[]) AS b(job_id, idx)"
            " ON r.job_id = b.job_id AND r.idx = b.idx",
            job_ids, indexes,
        )
        return {(r["job_id"], r["idx"]): Outcome(*r) for r in rows}

    async def _apply(
        self,
        conn: asyncpg.Connection,
        target_name: str,
        operation: str,
        records: list[_Pending],
        seen_recently: Callable[[bytes], bool],
        result: BatchResult,
        *,
        careful: bool,
    ) -> None:
        target = self._targets[target_name]
        key_json = key_json_encoder(target)
        sql = self._statements[target_name]
        applied_here: set[bytes] = set()
        for generation in generations(records):
            fresh: list[_Pending] = []
            for record in generation:
                if record.digest in applied_here or seen_recently(record.digest):
                    result.outcomes.append(
                        Outcome(record.envelope.job_id, record.index, DUPLICATE, key_json(record.row))
                    )
                else:
                    fresh.append(record)
            if not fresh:
                continue
            if careful:
                failures = await self._write_isolating_bad_rows(conn, sql, target, operation, fresh)
            else:
                await self._write_all_or_raise(conn, sql, target, operation, fresh)
                failures = {}
            for n, record in enumerate(fresh):
                key = key_json(record.row)
                failure = failures.get(n)
                if failure is None:
                    applied_here.add(record.digest)
                    result.applied_hashes.append((record.envelope, record.digest))
                    result.outcomes.append(
                        Outcome(record.envelope.job_id, record.index, SUCCEEDED, key)
                    )
                else:
                    result.outcomes.append(
                        Outcome(record.envelope.job_id, record.index, FAILED, key, *failure)
                    )

    @staticmethod
    async def _write_all_or_raise(
        conn: asyncpg.Connection,
        sql: TargetStatements,
        target: Target,
        operation: str,
        records: list[_Pending],
    ) -> None:
        """Write records set-based in one go; _RowsNeedIsolating if any row does not go in."""
        rows = [(n, *r.row) for n, r in enumerate(records)]
        try:
            if operation == "insert":
                await _stage(conn, sql, rows)
                written = int((await conn.execute(sql.insert_all)).rsplit(" ", 1)[1])
                if written != len(rows):
                    raise _RowsNeedIsolating("a key already exists")
            else:
                await PostgresSink._write_set(conn, sql, target, operation, rows)
        except asyncpg.PostgresError as e:
            if str(e.sqlstate).startswith(_ROW_ERROR_CLASSES):
                raise _RowsNeedIsolating(str(e.sqlstate)) from e
            raise

    async def _write_isolating_bad_rows(
        self,
        conn: asyncpg.Connection,
        sql: TargetStatements,
        target: Target,
        operation: str,
        records: list[_Pending],
    ) -> dict[int, tuple[str, str]]:
        """Write records set-based; if the database rejects a row, find it row by row.

        Returns failures by position in ``records``: (SQLSTATE, message).
        """
        rows = [(n, *r.row) for n, r in enumerate(records)]
        try:
            async with conn.transaction():  # a savepoint
                return await self._write_set(conn, sql, target, operation, rows)
        except asyncpg.PostgresError as e:
            if not str(e.sqlstate).startswith(_ROW_ERROR_CLASSES):
                raise
        failures: dict[int, tuple[str, str]] = {}
        for row in rows:
            try:
                async with conn.transaction():
                    failures.update(await self._write_set(conn, sql, target, operation, [row]))
            except asyncpg.PostgresError as e:
                if not str(e.sqlstate).startswith(_ROW_ERROR_CLASSES):
                    raise
                failures[row[0]] = (str(e.sqlstate), _row_error_message(e))
        return failures

    @staticmethod
    async def _write_set(
        conn: asyncpg.Connection,
        sql: TargetStatements,
        target: Target,
        operation: str,
        rows: list[tuple[Any, ...]],
    ) -> dict[int, tuple[str, str]]:
        if operation == "delete":
            await conn.execute(sql.prepare_key_stage)
            key_rows = [(r[0], *(r[1 + i] for i in target.key_indexes)) for r in rows]
            await conn.copy_records_to_table(
                sql.key_stage, records=key_rows, columns=list(sql.key_stage_columns)
            )
            await conn.execute(sql.lock_for_delete)
            await conn.execute(sql.delete)
            return {}
        await _stage(conn, sql, rows)
        if operation == "upsert":
            await conn.execute(sql.upsert)
            return {}
        inserted = {r[0] for r in await conn.fetch(sql.insert)}
        return {
            r[0]: ("23505", "a row with this key already exists")
            for r in rows
            if r[0] not in inserted
        }

    @staticmethod
    async def _record_outcomes(conn: asyncpg.Connection, outcomes: Iterable[Outcome]) -> None:
        records = [(o.job_id, o.index, o.status, o.key, o.code, o.message) for o in outcomes]
        if records:
            await conn.copy_records_to_table(
                "sluice_record_results",
                records=records,
                columns=["job_id", "idx", "status", "key", "code", "message"],
            )

    @staticmethod
    async def _update_jobs(
        conn: asyncpg.Connection, envelopes: Sequence[Envelope], outcomes: Sequence[Outcome]
    ) -> dict[str, dict[str, Any]]:
        counts: dict[str, list[int]] = {e.job_id: [0, 0, 0, 0] for e in envelopes}
        slot = {SUCCEEDED: 0, FAILED: 1, DUPLICATE: 2, ABORTED: 3}
        for o in outcomes:
            counts[o.job_id][slot[o.status]] += 1
        stream = {e.job_id for e in envelopes if e.source_topic is not None}
        snapshots: dict[str, dict[str, Any]] = {}
        # Sorted: two transactions updating the same jobs lock them in the same order.
        for job_id, (ok, bad, dup, aborted) in sorted(counts.items()):
            if ok + bad + dup + aborted == 0:
                continue
            row = await conn.fetchrow(
                _UPDATE_JOB, job_id, ok, bad, dup, job_id in stream, aborted
            )
            if row is not None:
                snapshots[job_id] = dict(row)
        return snapshots


_ADVANCE_POSITIONS = """
INSERT INTO sluice_consumer_positions (consumer_group, topic, partition, next_offset)
SELECT $1, $2, p, o FROM unnest($3::int[], $4::bigint[]) AS t(p, o)
ON CONFLICT (consumer_group, topic, partition)
DO UPDATE SET next_offset = GREATEST(sluice_consumer_positions.next_offset, EXCLUDED.next_offset)
"""

# A halted job (failed, aborted) keeps its state and completion time: only its counts move.
_UPDATE_JOB = """
UPDATE sluice_jobs SET
    succeeded = succeeded + $2,
    failed = failed + $3,
    duplicates = duplicates + $4,
    aborted = aborted + $6,
    records_received = records_received + CASE WHEN $5 THEN $2 + $3 + $4 ELSE 0 END,
    state = CASE
        WHEN state IN ('failed', 'aborted') THEN state
        WHEN $5 THEN 'processing'
        WHEN succeeded + failed + duplicates + $2 + $3 + $4 < records_received THEN 'processing'
        WHEN failed + $3 > 0 THEN 'completed_with_errors'
        ELSE 'completed' END,
    completed_at = CASE
        WHEN state IN ('failed', 'aborted') THEN completed_at
        WHEN NOT $5 AND succeeded + failed + duplicates + $2 + $3 + $4 >= records_received
        THEN now() END,
    progressed_at = now(),
    updated_at = now()
WHERE job_id = $1
RETURNING job_id, target, operation, source, state, records_received, succeeded, failed,
          duplicates, aborted, reason, created_at, accepted_at, updated_at, completed_at,
          tenant, principal
"""


async def _stage(conn: asyncpg.Connection, sql: TargetStatements, rows: list[tuple[Any, ...]]) -> None:
    """Fill the (empty) staging table with rows, by binary COPY."""
    await conn.execute(sql.prepare_stage)
    await conn.copy_records_to_table(sql.stage, records=rows, columns=list(sql.stage_columns))


def _row_error_message(error: asyncpg.PostgresError) -> str:
    """The database's message without DETAIL, which may quote the record's values."""
    return str(getattr(error, "message", None) or type(error).__name__)
