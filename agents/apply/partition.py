"""The apply loop of one records partition: messages in log order in, rows and outcomes out.

Built from its parts (a sink, a publisher, a decoder and settings) so that its order of
writes, publications and position moves can be driven with fakes in unit tests.

Per take of messages:
1. The envelopes of jobs still being received wait (they are kept, undecoded, in log
   order); every other envelope is applied, so one big upload never holds other jobs.
   A job whose web process died is failed by its deadline on the database's clock, and
   its waiting envelopes then become ``aborted`` outcomes.
2. The ready envelopes are decoded and written in chunks of about ``batch_size``
   records, one transaction each, fenced by the partition's owner epoch.
3. Early write: the waiting envelopes of one big job are written meanwhile in a
   transaction left open (``app.store.sink.EarlyJobWrite``), committed once the job is
   sealed, rolled back if it fails, so that writing a big upload overlaps receiving it.
   It gives way (is rolled back, the job then waits as in 1.) whenever another job's
   write on this partition touches one of its keys or waits for one of its locks:
   writes of a key keep the order they would have without it.
4. Once the broker has acknowledged every outcome of the take, the partition's position
   moves past it, but never past the first envelope still waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from agents.apply.batching import chunk_by_records
from agents.apply.decode import Delivery, EnvelopeDecoder, RecordsMessage
from agents.apply.retry import until_done
from app import metrics
from app.settings import Settings
from app.store.errors import WriteGaveUp, is_lock_timeout, row_error_message
from app.store.positions import Claim, Fence, Fenced
from app.store.sink import BatchResult, Undeliverable, WrittenChunk
from schemas.envelope import Envelope
from schemas.outcomes import count_statuses
from schemas.vocabulary import RecordStatus
from schemas.write_plan import Verdict

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_GAVE_UP = "write_failed"
EARLY_LOCK_WAIT_S = 2.0
"""While an early write is open on the partition, how long another write waits for a row
lock before the early write gives way (it may hold that lock until its job is sealed)."""


class EarlyWriteEnd(StrEnum):
    """How an early write ended (the label of ``sluice_early_writes_total``)."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    """Its job failed or was aborted instead of being sealed."""
    GAVE_WAY = "gave_way"
    """Another job's write on its partition touched one of its keys or locks."""
    FAILED = "failed"
    """A database error; its envelopes take the ordinary path."""


class EarlyWrite(Protocol):
    """A job's envelopes written while it is received (app.store.sink.EarlyJobWrite)."""

    job_id: str

    async def write(self, envelopes: Sequence[Envelope]) -> None: ...

    def overlaps(self, envelopes: Sequence[Envelope]) -> bool: ...

    async def finish(self, owner: Claim) -> list[WrittenChunk] | None: ...

    async def discard(self) -> None: ...


class ApplySink(Protocol):
    """What the apply loop needs of the database (app.store.sink.PostgresSink)."""

    async def still_receiving(self, job_ids: Iterable[str]) -> set[str]: ...

    async def write(self, envelopes: Sequence[Envelope], owner: Claim,
                    undeliverable: Sequence[Undeliverable] = (), *,
                    give_up: Verdict | None = None,
                    lock_timeout_s: float | None = None) -> BatchResult: ...

    async def advance(self, fence: Fence) -> None: ...

    async def open_job(self, job_id: str) -> EarlyWrite | None: ...


Publish = Callable[[BatchResult, Sequence[Envelope]], Awaitable[Awaitable[object]]]
"""Sends a committed chunk's outcomes; the awaitable it returns completes once the broker has them."""


@dataclass(frozen=True, slots=True)
class ApplySettings:
    """The settings the apply loop reads."""

    batch_size: int
    write_attempts: int
    db_retry_max_s: float
    early_writes: bool = False

    @classmethod
    def of(cls, settings: Settings) -> ApplySettings:
        return cls(settings.batch_size, settings.write_attempts, settings.db_retry_max_s,
                   settings.early_writes)


class PartitionApplier:
    """Applies one records partition for as long as this worker owns it (see module docstring)."""

    def __init__(self, owner: Claim, sink: ApplySink, publish: Publish, decoder: EnvelopeDecoder,
                 settings: ApplySettings) -> None:
        self.owner = owner
        self._sink = sink
        self._publish = publish
        self._decoder = decoder
        self._settings = settings
        self._position = owner.next_offset
        self._waiting: list[RecordsMessage] = []
        self._early: EarlyWrite | None = None
        self._early_offsets: set[int] = set()
        """Offsets of the waiting envelopes the early write has written."""
        self._gave_up: set[str] = set()
        """Jobs whose early write gave way or failed: they wait for their seal."""

    @property
    def partition(self) -> int:
        return self.owner.partition

    @property
    def position(self) -> int | None:
        """The committed position: the first offset not yet applied and published."""
        return self._position

    @property
    def waiting_bytes(self) -> int:
        """Bytes of envelopes held back for jobs still being received."""
        return sum(len(m.value) for m in self._waiting)

    @property
    def waiting(self) -> bool:
        """True while envelopes wait for their jobs to be sealed: look again soon."""
        return bool(self._waiting)

    async def apply(self, messages: Sequence[RecordsMessage]) -> None:
        """Apply a take of messages (offset order, after any held back) as the module says.

        Raises Fenced when another worker has claimed the partition.
        """
        pending = [*self._waiting, *messages]
        if not pending:
            return
        end = max(m.offset for m in pending) + 1
        job_ids = {m.job_id for m in pending if m.job_id is not None}
        receiving = await self._retry(lambda: self._sink.still_receiving(job_ids),
                                      "job state read") if job_ids else set()
        sent: list[Awaitable[object]] = []
        if self._early is not None and self._early.job_id not in receiving:
            committed = await self._finish_early()
            if committed:
                sent += await self._publish_chunks(committed)
                pending = [m for m in pending if m.offset not in committed.offsets]
        ready = [m for m in pending if m.job_id not in receiving]
        self._waiting = [m for m in pending if m.job_id in receiving]
        if ready:
            with metrics.timed_stage("consume") as stage:
                deliveries = [await self._decoder.decode_resolving(self.partition, m) for m in ready]
                stage.records = sum(len(d.envelope.items) for d in deliveries if d.envelope)
            sent += await self._write(deliveries)
        self._gave_up &= {m.job_id for m in self._waiting if m.job_id is not None}
        if self._settings.early_writes and self._waiting:
            await self._write_early()
        if sent:
            with metrics.timed_stage("publish"):
                await asyncio.gather(*sent)
        position = min(self._waiting[0].offset, end) if self._waiting else end
        if self._position is None or position > self._position:
            fence = Fence(self.partition, self.owner.epoch, position)
            await self._retry(lambda: self._sink.advance(fence), "position move")
            self._position = position

    async def close(self) -> None:
        """Give up any early write (the partition is no longer applied here)."""
        await self._drop_early(None)

    async def _write_early(self) -> None:
        """Write the waiting envelopes of one job ahead of its seal (module docstring, 3.).

        Only once a full chunk of them waits: a small job is sealed before that matters.
        Any failure only gives the early write up; the envelopes still wait.
        """
        todo = [m for m in self._waiting if m.offset not in self._early_offsets
                and (m.job_id == self._early.job_id if self._early is not None
                     else m.job_id not in self._gave_up)]
        if self._early is None:
            job_id = _job_with_records(todo, self._settings.batch_size)
            if job_id is None:
                return
            try:
                self._early = await self._sink.open_job(job_id)
            except Exception as e:  # the ordinary path will wait for, or report, the database
                log.warning("early write not begun: %s", type(e).__name__)
            if self._early is None:
                return
            todo = [m for m in todo if m.job_id == job_id]
        elif sum(m.records for m in todo) < self._settings.batch_size:
            return
        early = self._early
        with metrics.timed_stage("consume") as stage:
            deliveries = [await self._decoder.decode_resolving(self.partition, m) for m in todo]
            stage.records = sum(len(d.envelope.items) for d in deliveries if d.envelope)
        written = [d for d in deliveries if d.envelope is not None]  # undeliverable: after the seal
        try:
            for chunk in chunk_by_records([d.envelope for d in written if d.envelope],
                                          self._settings.batch_size):
                with metrics.timed_stage("write") as stage:
                    await early.write(chunk)
                    stage.records = sum(len(e.items) for e in chunk)
        except Exception as e:
            log.warning("early write of job %s given up: %s", early.job_id, type(e).__name__)
            await self._drop_early(EarlyWriteEnd.FAILED)
            return
        self._early_offsets.update(d.offset for d in written)

    async def _finish_early(self) -> _Committed | None:
        """Commit the early write of a job no longer receiving; None if it was rolled back
        (the job failed or was aborted, or the commit failed: its envelopes then take the
        ordinary path, where the ledger shows whether that commit happened after all)."""
        early, offsets = self._early, self._early_offsets
        assert early is not None
        self._early, self._early_offsets = None, set()
        try:
            chunks = await early.finish(self.owner)
        except Fenced:
            raise
        except Exception as e:
            log.warning("early write of job %s not committed: %s", early.job_id, type(e).__name__)
            metrics.early_writes.labels(EarlyWriteEnd.FAILED).inc()
            return None
        metrics.early_writes.labels(
            EarlyWriteEnd.COMMITTED if chunks is not None else EarlyWriteEnd.ROLLED_BACK).inc()
        return None if chunks is None else _Committed(chunks, offsets)

    async def _drop_early(self, reason: EarlyWriteEnd | None) -> None:
        early, self._early, self._early_offsets = self._early, None, set()
        if early is not None:
            self._gave_up.add(early.job_id)
            await early.discard()
            if reason is not None:
                metrics.early_writes.labels(reason).inc()

    async def _publish_chunks(self, committed: _Committed) -> list[Awaitable[object]]:
        sent = []
        for chunk in committed.chunks:
            sent.append(await self._publish(chunk.result, chunk.envelopes))
            self._count(chunk.result, chunk.envelopes)
        return sent

    async def _write(self, deliveries: list[Delivery]) -> list[Awaitable[object]]:
        """Write the envelopes chunk by chunk; each chunk's outcomes are sent after its commit.

        Returns the pending sends: the caller waits for them before moving the position.
        """
        undeliverable = [d.undeliverable for d in deliveries if d.undeliverable is not None]
        chunks = chunk_by_records(
            [d.envelope for d in deliveries if d.envelope is not None], self._settings.batch_size)
        if not chunks and undeliverable:
            chunks = [[]]
        sent: list[Awaitable[object]] = []
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            result = await self._write_chunk(chunk, undeliverable if last else [])
            sent.append(await self._publish(result, chunk))
            self._count(result, chunk)
        return sent

    @staticmethod
    def _count(result: BatchResult, chunk: Sequence[Envelope]) -> None:
        for counts in count_statuses(result.blocks).values():
            for status, count in counts.items():
                if count:
                    metrics.records_written.labels(chunk[0].target if chunk else "", status).inc(count)

    async def _write_chunk(self, envelopes: list[Envelope],
                           undeliverable: list[Undeliverable]) -> BatchResult:
        """Write one chunk. A chunk the database keeps refusing past the attempt bound is
        written once more with every record failed (``write_failed``, with the SQLSTATE),
        so that its jobs still end."""
        if self._early is not None and self._early.overlaps(envelopes):
            await self._drop_early(EarlyWriteEnd.GAVE_WAY)

        async def attempt() -> BatchResult:
            started = time.perf_counter()
            try:
                with metrics.timed_stage("write") as stage:
                    result = await self._sink.write(
                        envelopes, self.owner, undeliverable,
                        lock_timeout_s=EARLY_LOCK_WAIT_S if self._early is not None else None)
                    stage.records = result.records
            except Exception as e:
                if self._early is not None and is_lock_timeout(e):
                    # Then retried, waiting for the lock as long as it takes.
                    await self._drop_early(EarlyWriteEnd.GAVE_WAY)
                raise
            metrics.batch_seconds.observe(time.perf_counter() - started)
            return result

        try:
            return await self._retry(attempt, "batch write")
        except WriteGaveUp as e:
            cause = e.__cause__
            verdict = Verdict(
                RecordStatus.FAILED, WRITE_GAVE_UP,
                f"the database refused the batch {e.attempts} times (SQLSTATE {e.sqlstate}): "
                f"{row_error_message(cause) if cause else ''}".rstrip(": "))
            return await self._retry(
                lambda: self._sink.write(envelopes, self.owner, undeliverable, give_up=verdict),
                "failed batch write")

    async def _retry(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        return await until_done(attempt, what, attempts=self._settings.write_attempts,
                                max_delay_s=self._settings.db_retry_max_s)


@dataclass(frozen=True, slots=True)
class _Committed:
    """An early write committed: its chunks to publish, and the offsets it covered."""

    chunks: list[WrittenChunk]
    offsets: set[int]


def _job_with_records(messages: Sequence[RecordsMessage], records: int) -> str | None:
    """The first job (in log order) with at least ``records`` records among the messages."""
    counts: dict[str, int] = {}
    for m in messages:
        if m.job_id is not None:
            counts[m.job_id] = counts.get(m.job_id, 0) + m.records
            if counts[m.job_id] >= records:
                return m.job_id
    return None
