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
3. Once the broker has acknowledged every outcome of the take, the partition's position
   moves past it, but never past the first envelope still waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from agents.apply.batching import chunk_by_records
from agents.apply.decode import Delivery, EnvelopeDecoder, RecordsMessage
from agents.apply.retry import until_done
from app import metrics
from app.settings import Settings
from app.store.errors import WriteGaveUp, row_error_message
from app.store.positions import Claim, Fence
from app.store.sink import BatchResult, Undeliverable
from schemas.envelope import Envelope
from schemas.outcomes import count_statuses
from schemas.vocabulary import RecordStatus
from schemas.write_plan import Verdict

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_GAVE_UP = "write_failed"


class ApplySink(Protocol):
    """What the apply loop needs of the database (app.store.sink.PostgresSink)."""

    async def still_receiving(self, job_ids: Iterable[str]) -> set[str]: ...

    async def write(self, envelopes: Sequence[Envelope], owner: Claim,
                    undeliverable: Sequence[Undeliverable] = (), *,
                    give_up: Verdict | None = None) -> BatchResult: ...

    async def advance(self, fence: Fence) -> None: ...


Publish = Callable[[BatchResult, Sequence[Envelope]], Awaitable[Awaitable[object]]]
"""Sends a committed chunk's outcomes; the awaitable it returns completes once the broker has them."""


@dataclass(frozen=True, slots=True)
class ApplySettings:
    """The settings the apply loop reads."""

    batch_size: int
    write_attempts: int
    db_retry_max_s: float

    @classmethod
    def of(cls, settings: Settings) -> ApplySettings:
        return cls(settings.batch_size, settings.write_attempts, settings.db_retry_max_s)


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
        job_ids = {m.job_id for m in pending if m.job_id is not None}
        receiving = await self._retry(lambda: self._sink.still_receiving(job_ids),
                                      "job state read") if job_ids else set()
        ready = [m for m in pending if m.job_id not in receiving]
        self._waiting = [m for m in pending if m.job_id in receiving]
        if ready:
            with metrics.timed_stage("consume") as stage:
                deliveries = [await self._decoder.decode_resolving(self.partition, m) for m in ready]
                stage.records = sum(len(d.envelope.items) for d in deliveries if d.envelope)
            sent = await self._write(deliveries)
            with metrics.timed_stage("publish"):
                await asyncio.gather(*sent)
        end = max(m.offset for m in pending) + 1
        position = min(self._waiting[0].offset, end) if self._waiting else end
        if self._position is None or position > self._position:
            fence = Fence(self.partition, self.owner.epoch, position)
            await self._retry(lambda: self._sink.advance(fence), "position move")
            self._position = position

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
            for counts in count_statuses(result.blocks).values():
                for status, count in counts.items():
                    if count:
                        metrics.records_written.labels(chunk[0].target if chunk else "",
                                                       status).inc(count)
        return sent

    async def _write_chunk(self, envelopes: list[Envelope],
                           undeliverable: list[Undeliverable]) -> BatchResult:
        """Write one chunk. A chunk the database keeps refusing past the attempt bound is
        written once more with every record failed (``write_failed``, with the SQLSTATE),
        so that its jobs still end."""
        async def attempt() -> BatchResult:
            started = time.perf_counter()
            with metrics.timed_stage("write") as stage:
                result = await self._sink.write(envelopes, self.owner, undeliverable)
                stage.records = result.records
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
