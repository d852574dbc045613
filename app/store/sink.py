"""The one PostgreSQL write boundary: a chunk of envelopes in, one transaction, outcomes out.

Each target's records are written by ``app.store.target_writes`` (COPY straight in when
nothing can conflict, else staged, checked, planned and applied in log order per key).

Exactly-once effects from at-least-once delivery: every outcome goes to the ledger (a
block per envelope) in the same transaction as the rows, so an envelope delivered again
finds its records there and is re-published, never re-applied.

A big job's envelopes need not wait for its seal: ``EarlyJobWrite`` writes them in a
transaction left open while the job is received and committed once it is sealed, so
that nothing of a job whose submission fails ever becomes visible.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, NamedTuple

import asyncpg

from app.errors import SluiceError
from app.store import jobs as job_store
from app.store import ledger, reports
from app.store.positions import Claim, Fence, PartitionPositions
from app.store.target_writes import TargetRecords, TargetWriter
from schemas.envelope import UNKNOWN_TARGET, Envelope
from schemas.identity import key_json_encoder
from schemas.outcomes import BlockBuilder, Outcome, OutcomeBlock, blocks_of, count_statuses
from schemas.received import row_text
from schemas.targets import Target
from schemas.vocabulary import HALTED_STATES, TERMINAL_STATES, JobState, Operation, RecordStatus
from schemas.write_plan import (
    Verdict,
)

log = logging.getLogger(__name__)

class JobNotSealed(SluiceError):
    """A job's records are still being produced; its envelopes must wait."""


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A records-topic message that could not be read as an envelope."""

    partition: int
    offset: int
    job_id: str | None
    """From the message's headers, when they name it."""
    records: int
    reason: str


class _Job(NamedTuple):
    state: str
    tenant: str | None
    created_on: date


@dataclass(slots=True)
class BatchResult:
    """What one committed chunk produced, for the agent to publish after the commit."""

    blocks: list[OutcomeBlock] = field(default_factory=list)
    """The outcomes written by this chunk, a block per envelope."""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Job snapshots after this chunk's counts were added."""
    replayed: list[OutcomeBlock] = field(default_factory=list)
    """Outcomes found already written: a redelivered envelope; published again."""

    @classmethod
    def of(cls, outcomes: Iterable[Outcome] = (), replayed: Iterable[Outcome] = (),
           jobs: dict[str, dict[str, Any]] | None = None) -> BatchResult:
        """A result from per-record outcomes."""
        return cls(blocks_of(outcomes), dict(jobs or {}), blocks_of(replayed))

    @property
    def records(self) -> int:
        """Outcomes written by this chunk."""
        return sum(len(b) for b in self.blocks)

    def outcomes(self) -> Iterator[Outcome]:
        """The outcomes written by this chunk, record by record."""
        for block in self.blocks:
            yield from block.outcomes()


class PostgresSink:
    """Writes chunks of envelopes into their target tables."""

    def __init__(
        self, pool: asyncpg.Pool, targets: Mapping[str, Target], *,
        positions: PartitionPositions, topic: str,
    ) -> None:
        self._pool = pool
        self._positions = positions
        self._topic = topic
        self._targets: dict[str, Target] = {}
        self.writer = TargetWriter()
        self.add_targets(targets)

    def add_targets(self, targets: Mapping[str, Target]) -> None:
        """Learn targets (a rolling deploy may add one while this worker runs)."""
        for name, target in targets.items():
            if name not in self._targets:
                self._targets[name] = target
        self.writer.add_targets(targets)

    async def claim(self, partitions: Iterable[int], topic_id: str | None = None) -> dict[int, Claim]:
        """Take records partitions over (fencing their previous owner); where each continues
        in the records topic's incarnation ``topic_id`` (None: not known)."""
        return await self._positions.claim(self._pool, partitions, topic_id)

    async def still_receiving(self, job_ids: Iterable[str]) -> set[str]:
        """Which of the jobs are still being received; any past its deadline is failed first."""
        return await job_store.still_receiving(self._pool, sorted(set(job_ids)))

    async def advance(self, fence: Fence) -> None:
        """Move a partition's position once the outcomes below it are published."""
        await self._positions.advance(self._pool, fence)

    async def write(
        self,
        envelopes: Sequence[Envelope],
        owner: Claim,
        undeliverable: Sequence[Undeliverable] = (),
        *,
        give_up: Verdict | None = None,
        lock_timeout_s: float | None = None,
    ) -> BatchResult:
        """Apply every record of the envelopes in one transaction.

        Raises Fenced (before anything is written) unless ``owner`` still owns the partition,
        JobNotSealed if a job is still being received. With ``give_up``, nothing is written
        to the targets: every record not yet in the ledger gets that verdict (a batch that
        kept failing past its retry bound). ``lock_timeout_s`` bounds each wait for a row
        lock (SQLSTATE 55P03 past it): set while this partition has an early write open,
        whose locks only this partition's own loop can release.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if lock_timeout_s is not None:
                await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
            await self._positions.hold(conn, owner.partition, owner.epoch)
            jobs = await self._jobs(conn, envelopes, undeliverable)
            live = [e for e in envelopes if e.job_id in jobs]
            result = await self._write_records(conn, live, jobs, give_up)
            result.jobs = await _update_jobs(conn, live, result.blocks, undeliverable, jobs)
            await reports.enqueue_terminal(conn, [
                job_id for job_id, job in jobs.items()
                if job.state in TERMINAL_STATES
                or result.jobs.get(job_id, {}).get("state") in TERMINAL_STATES])
            await _record_undeliverable(conn, self._topic, undeliverable)
            return result

    async def open_job(self, job_id: str) -> EarlyJobWrite | None:
        """Begin writing a job still being received (see EarlyJobWrite); None unless it is."""
        conn: asyncpg.Connection = await self._pool.acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("SET LOCAL idle_in_transaction_session_timeout = "
                               f"{int(EARLY_WRITE_IDLE_S * 1000)}")
            rows = await job_store.states_of(conn, [job_id])
            if not rows or rows[0]["state"] != JobState.RECEIVING:
                await transaction.rollback()
                await self._pool.release(conn)
                return None
        except BaseException:
            await self._pool.release(conn)
            raise
        job = _Job(rows[0]["state"], rows[0]["tenant"], rows[0]["created_at"].date())
        return EarlyJobWrite(self, conn, transaction, job_id, job)

    async def _write_records(
        self, conn: asyncpg.Connection, envelopes: Sequence[Envelope], jobs: Mapping[str, _Job],
        give_up: Verdict | None,
    ) -> BatchResult:
        """The envelopes' rows and ledger blocks, in the caller's transaction (job counts not moved)."""
        done = await self._already_written(conn, envelopes, jobs)
        pending: dict[str, TargetRecords] = {}
        builders = [self._sort_items(envelope, jobs[envelope.job_id], done, pending, give_up)
                    for envelope in envelopes]
        for target_name in sorted(pending):
            if pending[target_name].rows:  # not when every record of it failed validation
                await self.writer.write(conn, self._targets[target_name], pending[target_name])
        result = BatchResult([block for builder in builders for block in builder.blocks()],
                             replayed=blocks_of(done.values()))
        await ledger.record(conn, result.blocks)
        return result

    def writes_any_key(self, envelopes: Iterable[Envelope], target_name: str,
                       keys: set[str]) -> bool:
        """True if a valid record of the envelopes for that target has one of ``keys`` (key
        JSON, as outcome blocks hold them)."""
        target = self._targets.get(target_name)
        if target is None:
            return False
        key_json = key_json_encoder(target)
        return any(item.row is not None and key_json(item.row) in keys
                   for envelope in envelopes if envelope.target == target_name
                   for item in envelope.items)

    def _sort_items(
        self,
        envelope: Envelope,
        job: _Job,
        done: Mapping[tuple[str, int], Outcome],
        pending: dict[str, TargetRecords],
        give_up: Verdict | None,
    ) -> BlockBuilder:
        """The envelope's block: outcomes settled for what needs no write (replayed, halted,
        invalid, unknown target); the rest queued for their target's write, as succeeded
        until the write says otherwise."""
        target = self._targets.get(envelope.target)
        key_json = key_json_encoder(target) if target is not None else None
        halted = job.state in HALTED_STATES
        job_id, operation = envelope.job_id, Operation(envelope.operation)
        builder = BlockBuilder(job_id)
        add = builder.add
        queue = pending.get(envelope.target) or pending.setdefault(envelope.target, TargetRecords()) \
            if target is not None and not halted and give_up is None else None
        if queue is not None:
            rows, operations, tenants = queue.rows, queue.operations, queue.tenants
            builders, positions = queue.builders, queue.positions
            queue.inserts_only = queue.inserts_only and operation is Operation.INSERT
        tenant = job.tenant
        succeeded = RecordStatus.SUCCEEDED
        received = envelope.received
        for item in envelope.items:
            if done and (job_id, item.index) in done:
                continue
            row = item.row
            if row is None:
                if halted:
                    add(item.index, RecordStatus.ABORTED, None)
                else:
                    add(item.index, RecordStatus.FAILED, None, item.error_code, item.error_message,
                        received.get(item.index))
            elif queue is not None:
                assert key_json is not None
                positions.append(add(item.index, succeeded, key_json(row)))
                rows.append(row)
                operations.append(operation)
                tenants.append(tenant)
                builders.append(builder)
            elif halted:
                add(item.index, RecordStatus.ABORTED, key_json(row) if key_json else None)
            elif give_up is not None:
                add(item.index, give_up.status, key_json(row) if key_json else None,
                    give_up.code, give_up.message,
                    row_text(target, row, operation) if target is not None else None)
            else:
                add(item.index, RecordStatus.FAILED, None, UNKNOWN_TARGET,
                    f"this worker knows no target named {envelope.target!r}")
        return builder

    async def _jobs(
        self, conn: asyncpg.Connection, envelopes: Sequence[Envelope],
        undeliverable: Sequence[Undeliverable],
    ) -> dict[str, _Job]:
        """The jobs of these envelopes that exist (an absent job's submission was refused
        before it was recorded: its records are ignored)."""
        stream_jobs = {e.job_id: e for e in envelopes if e.source_topic is not None}
        for job_id, e in sorted(stream_jobs.items()):
            await job_store.open_stream(conn, job_id, e.target, e.operation)
        wanted = {e.job_id for e in envelopes} | {u.job_id for u in undeliverable if u.job_id}
        rows = await job_store.states_of(conn, list(wanted))
        # The apply loop held these jobs' envelopes back until sealed (and failed the
        # expired ones); a job receiving here would be a bug, so it waits rather than applies.
        if waiting := sorted(r["job_id"] for r in rows if r["state"] == JobState.RECEIVING):
            raise JobNotSealed(", ".join(waiting))
        return {row["job_id"]: _Job(row["state"], row["tenant"], row["created_at"].date())
                for row in rows}

    @staticmethod
    async def _already_written(
        conn: asyncpg.Connection, envelopes: Sequence[Envelope], jobs: Mapping[str, _Job]
    ) -> dict[tuple[str, int], Outcome]:
        """Outcomes already in the ledger for the envelopes' records.

        Every envelope is looked up, not only those below the committed position: the same
        records can come back at a new offset (a producer retry, the forwarder re-forwarding
        after a crash). An envelope from the web is always written whole (chunks never split
        an envelope), so its first record answers for all of it: one probe per envelope,
        and the full lookup only for one found written. The forwarder can regroup records
        differently after a crash, so its envelopes are looked up record by record.
        """
        if not envelopes:
            return {}
        # Outcomes are written on or after the day their job was created (a day of slack
        # for clocks): older day partitions need not be searched.
        since = min(jobs[e.job_id].created_on for e in envelopes) - timedelta(days=1)
        whole = [e for e in envelopes if e.source_topic is None and e.items]
        found = await ledger.written_firsts(
            conn, [e.job_id for e in whole], [e.items[0].index for e in whole], since)
        by_record = [e for e in envelopes if e.items and (
            e.source_topic is not None or (e.job_id, e.items[0].index) in found)]
        if not by_record:
            return {}
        written = await ledger.outcomes_in(
            conn, [e.job_id for e in by_record], [min(i.index for i in e.items) for e in by_record],
            [max(i.index for i in e.items) for e in by_record], since)
        # Only the envelopes' own records: a block read may hold others near them.
        return {(e.job_id, i.index): o for e in by_record for i in e.items
                if (o := written.get((e.job_id, i.index))) is not None}


EARLY_WRITE_IDLE_S = 15.0
"""PostgreSQL ends an early write's session once idle this long inside its transaction, so
that a frozen worker's uncommitted rows stop blocking the partition's next owner."""


@dataclass(slots=True)
class WrittenChunk:
    """A chunk an early write wrote: its outcomes, and its envelopes without their records
    (what publishing the outcomes needs)."""

    result: BatchResult
    envelopes: list[Envelope]


class EarlyJobWrite:
    """One job's envelopes on one partition, written while the job is still being received.

    They go into one transaction left open until the apply loop sees the job sealed:
    ``finish`` then checks the fence and the job's state, adds the counts and commits. If
    the job failed or was aborted instead, it rolls back and the envelopes take the
    ordinary path (aborted outcomes): until the commit nothing of them is visible, and a
    crash loses nothing the log does not hold. Another job's write on this partition of a
    key this one wrote must not be judged before this job's rows, so the apply loop asks
    ``overlaps`` and discards the early write first.
    """

    def __init__(self, sink: PostgresSink, conn: asyncpg.Connection,
                 transaction: asyncpg.transaction.Transaction, job_id: str, job: _Job) -> None:
        self.job_id = job_id
        self._sink = sink
        self._conn = conn
        self._transaction = transaction
        self._job = job
        self._target: str | None = None
        self._keys: set[str] | None = None
        """The keys written, gathered from the outcome blocks on the first overlap check
        (most early writes never meet another job's write)."""
        self._chunks: list[WrittenChunk] = []
        self._open = True

    async def write(self, envelopes: Sequence[Envelope]) -> None:
        """Write a chunk of the job's envelopes (in log order after the previous ones)."""
        assert all(e.job_id == self.job_id for e in envelopes)
        result = await self._sink._write_records(self._conn, envelopes, {self.job_id: self._job},
                                                 None)
        self._target = envelopes[0].target if envelopes else self._target
        if self._keys is not None:
            self._keys.update(_keys_of(result.blocks))
        self._chunks.append(WrittenChunk(result, [
            Envelope(e.job_id, e.target, e.operation, (), e.source_topic, e.source_partition)
            for e in envelopes]))

    def overlaps(self, envelopes: Sequence[Envelope]) -> bool:
        """True if the envelopes write a key this early write has written (or refused)."""
        if self._target is None:
            return False
        if self._keys is None:
            self._keys = _keys_of(b for chunk in self._chunks for b in chunk.result.blocks)
        return self._sink.writes_any_key(envelopes, self._target, self._keys)

    async def finish(self, owner: Claim) -> list[WrittenChunk] | None:
        """Commit once the job is sealed: its chunks, the last carrying the job's snapshot.

        None, with everything rolled back, if the job failed or was aborted instead. Raises
        Fenced (rolled back) if ``owner`` no longer owns the partition.
        """
        conn = self._conn
        try:
            await self._sink._positions.hold(conn, owner.partition, owner.epoch)
            state = await job_store.lock_state(conn, self.job_id)
            if state not in (JobState.ACCEPTED, JobState.PROCESSING):
                await self.discard()
                return None
            blocks = [block for chunk in self._chunks for block in chunk.result.blocks]
            headers = [e for chunk in self._chunks for e in chunk.envelopes]
            jobs = await _update_jobs(conn, headers, blocks, (), {self.job_id: self._job})
            if jobs.get(self.job_id, {}).get("state") in TERMINAL_STATES:
                await reports.enqueue_terminal(conn, [self.job_id])
            await self._transaction.commit()
        except BaseException:
            await self.discard()
            raise
        self._open = False
        await self._sink._pool.release(conn)
        if self._chunks:
            self._chunks[-1].result.jobs = jobs
        return self._chunks

    async def discard(self) -> None:
        """Roll everything back and give the connection back (idempotent)."""
        if not self._open:
            return
        self._open = False
        try:
            with contextlib.suppress(Exception):  # a session PostgreSQL ended rolled back already
                await self._transaction.rollback()
        finally:
            await self._sink._pool.release(self._conn)


def _keys_of(blocks: Iterable[OutcomeBlock]) -> set[str]:
    return {key for block in blocks for key in block.keys if key is not None}


async def _update_jobs(
    conn: asyncpg.Connection, envelopes: Sequence[Envelope], blocks: Sequence[OutcomeBlock],
    undeliverable: Sequence[Undeliverable], jobs: Mapping[str, _Job],
) -> dict[str, dict[str, Any]]:
    counts = count_statuses(blocks)
    for u in undeliverable:
        if u.job_id is not None and u.job_id in jobs:
            job = counts.setdefault(u.job_id, dict.fromkeys(RecordStatus, 0))
            job[RecordStatus.FAILED] += u.records
    stream = {e.job_id for e in envelopes if e.source_topic is not None}
    return await job_store.record_progress(conn, {
        job_id: job_store.Progress(c[RecordStatus.SUCCEEDED], c[RecordStatus.FAILED],
                                   c[RecordStatus.DUPLICATE], c[RecordStatus.ABORTED],
                                   job_id in stream)
        for job_id, c in counts.items() if any(c.values())})


async def _record_undeliverable(
    conn: asyncpg.Connection, topic: str, undeliverable: Sequence[Undeliverable]
) -> None:
    for u in undeliverable:
        await conn.execute(
            "INSERT INTO sluice_undeliverable (topic, partition, \"offset\", job_id, records, reason)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            topic, u.partition, u.offset, u.job_id, u.records, u.reason,
        )

