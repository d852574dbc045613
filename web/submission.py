"""A bulk submission: decode the body as a stream, spool or produce envelopes, seal the job.

Envelopes are spooled to a temporary file while the body is read, and a payload that
stays small is produced only once it has parsed whole: one rejected at its last byte
(bad JSON, over the size limit) has then written nothing to Kafka and left no job.
A payload that proves big (``stream_after_bytes`` of envelopes) is recorded as a
receiving job there and then, and its envelopes are produced as they are made, so that
the workers write it while the rest is parsed (their writes commit only once it is
sealed). Rejected later, that job is failed and its records that reached Kafka are
reported aborted: none of them reaches the table. Memory stays flat either way.

A record that fails here travels in its envelope with its text as received, cut to 4 KiB
(``schemas.received``), for its failed result line. A partition's buffer is flushed once
it holds FAILED_TEXT_PER_ENVELOPE of such text, as well as at a batch of records: a
payload whose every record fails holds at most that much per partition, not a batch of
4 KiB texts, and its envelopes need no halving to fit a Kafka message.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError

from app import metrics
from app.store import jobs
from schemas.envelope import (
    JOB_HEADER,
    MAX_ENVELOPE_BYTES,
    RECORDS_HEADER,
    Envelope,
    EnvelopeCodec,
    Item,
)
from schemas.preparation import OPERATIONS, RecordPreparer
from schemas.received import RecordText, json_text, record_text, row_text
from schemas.targets import Target
from schemas.vocabulary import JobSource
from web.echo import echo
from web.idempotency import Fingerprint
from web.payloads import (
    ConvertedRecord,
    MalformedRecord,
    PayloadProblem,
    PayloadReader,
    RawRecord,
    RecordCode,
)
from web.problems import Problem, ProblemType

log = logging.getLogger(__name__)

_FRAME = struct.Struct("!III")  # partition, records, length
FAILED_TEXT_PER_ENVELOPE = 256 * 1024
"""Characters of failed records' text a partition's buffer holds before it is flushed."""


class Spool:
    """Encoded envelopes on disk, in the order they were made."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory)
        self.envelopes = 0
        self.records = 0
        self.bytes = 0

    def append(self, partition: int, data: bytes, records: int) -> None:
        """Add one encoded envelope of ``records`` records bound for ``partition``."""
        self._file.write(_FRAME.pack(partition, records, len(data)))
        self._file.write(data)
        self.envelopes += 1
        self.records += records
        self.bytes += len(data)

    def replay(self) -> Iterator[tuple[int, int, bytes]]:
        """Read the envelopes back, in order: (partition, records, encoded envelope)."""
        self._file.flush()
        self._file.seek(0)
        while header := self._file.read(_FRAME.size):
            partition, records, length = _FRAME.unpack(header)
            yield partition, records, self._file.read(length)

    def close(self) -> None:
        """Delete the spool file."""
        self._file.close()


@dataclass(frozen=True, slots=True)
class SubmissionContext:
    """What a submission needs from the running web process."""

    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    codec: EnvelopeCodec
    targets: dict[str, Target]
    records_topic: str
    partitions: int
    batch_size: int
    spool_dir: Path
    stream_after_bytes: int = 1024 * 1024
    """Envelope bytes spooled after which a payload is produced while it is parsed."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A job whose records are all durably in Kafka."""

    job_id: str
    target: str
    operation: str
    records: int


def known_target(targets: dict[str, Target], name: str) -> Target:
    """The target of that name; 422 unknown-target (the name echoed cut short) otherwise."""
    target = targets.get(name)
    if target is None:
        raise Problem(422, "Unknown target", f"no target named {echo(name)}",
                      slug=ProblemType.UNKNOWN_TARGET, known_targets=sorted(targets))
    return target


def resolve_target(
    targets: dict[str, Target],
    query_target: str | None, query_operation: str | None,
    body_target: str | None, body_operation: str | None,
) -> tuple[Target, str]:
    """Pick target and operation from the query string or the JSON envelope; they must agree."""
    for name, q, b in (("target", query_target, body_target),
                       ("operation", query_operation, body_operation)):
        if q and b and q != b:
            raise Problem(422, "Conflicting parameters",
                          f"{name} is {echo(q)} in the query string but {echo(b)} in the body",
                          slug=ProblemType.CONFLICTING_PARAMETERS)
    target_name = query_target or body_target
    operation = query_operation or body_operation or "insert"
    if not target_name:
        raise Problem(422, "Missing target", "give ?target=NAME or \"target\" in the body",
                      slug=ProblemType.MISSING_TARGET)
    target = known_target(targets, target_name)
    if operation not in OPERATIONS:
        raise Problem(422, "Unknown operation",
                      f"operation must be one of {', '.join(OPERATIONS)}", slug=ProblemType.UNKNOWN_OPERATION)
    return target, operation


Authorize = Callable[[str, str], None]
"""Raises (403) unless the caller may run the operation on the target."""


def fail_alone_if_oversize(
    codec: EnvelopeCodec, part: Envelope, data: bytes, target: Target
) -> tuple[Envelope, bytes]:
    """A one-record envelope still over one Kafka message: that record fails instead.

    ``encode_bounded`` halves envelopes down to single records; one record alone over
    MAX_ENVELOPE_BYTES would be refused by the broker and sink the whole job with it.
    Its text as received is gone by now: its converted row stands for it, as JSON.
    """
    if len(data) <= MAX_ENVELOPE_BYTES:
        return part, data
    received = dict(part.received)
    for item in part.items:
        if item.row is not None:
            received[item.index] = row_text(target, item.row, part.operation)
    failed = replace(part, items=[
        Item(item.index, None, RecordCode.TOO_LARGE,
             f"record {item.index}: over {MAX_ENVELOPE_BYTES} bytes once packed for Kafka")
        for item in part.items
    ], received=received)
    return failed, codec.encode(failed)


def _failed_text(record: RawRecord) -> RecordText:
    """The text as received of a framed record that failed validation: its line or row, or
    for a JSON element (whose text the parser does not keep) its value as JSON."""
    return record_text(record.raw) if record.raw is not None else json_text(record.value)


OnBig = Callable[[Target, str, int], Awaitable[None]]
"""Called once a payload proves big, before its first envelope is produced, with its
target, operation and the records spooled so far: admits them and records the job."""


class Outlet:
    """Where a submission's envelopes go: the spool, until the payload proves big (see the
    module docstring); from then on, Kafka as they are made, with a bounded number of
    sends awaiting the broker's acknowledgement."""

    MAX_PENDING = 256

    def __init__(self, ctx: SubmissionContext, job_id: str, spool: Spool, on_big: OnBig) -> None:
        self._ctx = ctx
        self._job = job_id.encode()
        self._spool = spool
        self._on_big = on_big
        self._pending: list[asyncio.Future[object]] = []
        self.streaming = False

    async def add(self, target: Target, operation: str, partition: int, data: bytes,
                  records: int) -> None:
        """One encoded envelope of ``records`` records bound for ``partition``."""
        if self.streaming:
            await self._send(partition, records, data)
            return
        self._spool.append(partition, data, records)
        if self._spool.bytes >= self._ctx.stream_after_bytes:
            await self._on_big(target, operation, self._spool.records)
            await self.produce_spool()

    async def produce_spool(self) -> None:
        """Send what is spooled; every envelope made after this is sent at once."""
        self.streaming = True
        for partition, records, data in self._spool.replay():
            await self._send(partition, records, data)

    async def drain(self) -> None:
        """Wait until the broker has acknowledged every envelope sent."""
        await asyncio.gather(*self._pending)
        self._pending.clear()

    async def _send(self, partition: int, records: int, data: bytes) -> None:
        self._pending.append(await self._ctx.producer.send(
            self._ctx.records_topic, value=data, key=str(partition).encode(), partition=partition,
            headers=[(JOB_HEADER, self._job), (RECORDS_HEADER, str(records).encode())],
        ))
        if len(self._pending) >= self.MAX_PENDING:  # bound what waits in memory
            await self.drain()


async def spool_payload(
    ctx: SubmissionContext, reader: PayloadReader, job_id: str,
    query_target: str | None, query_operation: str | None, outlet: Outlet,
    authorize: Authorize | None = None,
) -> tuple[Target, str, int]:
    """Decode, validate and pack every record into ``outlet``; return (target, operation,
    record count).

    Target and operation are resolved, and ``authorize``d, as soon as the body has settled
    them and before any record is read: a refused request costs no more than its head.
    """
    buffers: list[list[Item]] = [[] for _ in range(ctx.partitions)]
    received: list[dict[int, RecordText]] = [{} for _ in range(ctx.partitions)]
    held = [0] * ctx.partitions  # characters of failed records' text in each buffer
    preparer: RecordPreparer | None = None
    count = 0

    def settle() -> None:
        nonlocal preparer
        target, operation = resolve_target(
            ctx.targets, query_target, query_operation, reader.target, reader.operation
        )
        if authorize is not None:
            authorize(target.name, operation)
        preparer = RecordPreparer(target, operation, ctx.partitions)
        reader.line_decoder = preparer.decode_json

    async def flush(partition: int) -> None:
        assert preparer is not None
        envelope = Envelope(job_id, preparer.target.name, preparer.operation, buffers[partition],
                            received=received[partition])
        buffers[partition], received[partition], held[partition] = [], {}, 0
        for part, data in ctx.codec.encode_bounded(envelope, MAX_ENVELOPE_BYTES):
            part, data = fail_alone_if_oversize(ctx.codec, part, data, preparer.target)
            await outlet.add(preparer.target, preparer.operation, partition, data, len(part.items))

    async for batch in reader.batches(on_settled=settle):
        assert preparer is not None  # the reader settles before its first record
        place, prepare, batch_size = preparer.place, preparer.prepare, ctx.batch_size
        for record in batch:
            text: RecordText | None = None
            if type(record) is ConvertedRecord:
                partition, item = place(record.index, record.row)
            elif type(record) is MalformedRecord:
                partition = record.index % ctx.partitions
                item = Item(record.index, None, record.code, record.message)
                text = record.record
            else:
                assert isinstance(record, RawRecord)
                partition, item = prepare(record.index, record.value, record.textual)
                if item.row is None:
                    text = _failed_text(record)
            buffer = buffers[partition]
            buffer.append(item)
            if text is not None:
                received[partition][item.index] = text
                held[partition] += len(text.text)
                if held[partition] >= FAILED_TEXT_PER_ENVELOPE:
                    await flush(partition)
                    continue
            if len(buffer) >= batch_size:
                await flush(partition)
        count += len(batch)
    if preparer is None or not count:
        # No record at all: still check the parameters so a typo gets its own error.
        resolve_target(ctx.targets, query_target, query_operation, reader.target, reader.operation)
        raise Problem(422, "Empty payload", "the payload holds no records", slug=ProblemType.EMPTY_PAYLOAD)
    for partition, buffer in enumerate(buffers):
        if buffer:
            await flush(partition)
    assert preparer is not None
    return preparer.target, preparer.operation, count


async def submit(
    ctx: SubmissionContext, reader: PayloadReader,
    query_target: str | None, query_operation: str | None, *, timeout_s: float,
    tenant: str | None = None, principal: str | None = None,
    admit: Callable[[str, str, int], Awaitable[None]] | None = None,
    idempotency_key: str | None = None, fingerprint: Fingerprint | None = None,
    authorize: Authorize | None = None, retry_of: str | None = None,
) -> Accepted:
    """Run one submission to the point where it is safe to answer 202.

    One deadline covers the whole submission: a body that does not arrive in time gets
    408, records that Kafka does not take in time get 503. ``authorize`` runs once target
    and operation are known, before any record is read; ``admit`` before records are
    produced (for a big payload, in two parts: those parsed when it proved big, then the
    rest). Once the job is recorded, any failure fails it: none of its records is applied.
    """
    job_id = str(uuid.uuid4())
    spool = Spool(ctx.spool_dir)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    admitted = 0
    recorded = sealed = False

    async def record_job(target: Target, operation: str, records: int) -> None:
        """Admit the records parsed so far and record the job as receiving."""
        nonlocal admitted, recorded
        if admit is not None:
            await admit(target.name, operation, records)
        admitted = records
        await jobs.create_receiving(
            ctx.pool, job_id, target.name, operation, records,
            seal_within_s=deadline - loop.time(), tenant=tenant, principal=principal,
            idempotency_key=idempotency_key, retry_of=retry_of)
        recorded = True

    outlet = Outlet(ctx, job_id, spool, record_job)
    try:
        try:
            async with asyncio.timeout_at(deadline):
                with metrics.timed_stage("parse") as stage:
                    target, operation, count = await spool_payload(
                        ctx, reader, job_id, query_target, query_operation, outlet, authorize
                    )
                    stage.records = count
        except TimeoutError as e:
            raise Problem(408, "Submission timed out",
                          f"the body was not received and parsed within {timeout_s:g} s; "
                          "nothing was accepted", slug=ProblemType.SUBMISSION_TIMEOUT) from e
        except KafkaError as e:  # a big payload's envelopes are produced while it is parsed
            raise _broker_problem(e, job_id) from e
        if outlet.streaming:
            if admit is not None:
                await admit(target.name, operation, count - admitted)
        else:
            await record_job(target, operation, count)
        try:
            async with asyncio.timeout_at(deadline):
                with metrics.timed_stage("produce", count):
                    if not outlet.streaming:
                        await outlet.produce_spool()
                    await outlet.drain()
        except (KafkaError, OSError, TimeoutError) as e:
            raise _broker_problem(e, job_id) from e
        try:
            await jobs.seal(ctx.pool, job_id, records=count,
                            request_fingerprint=fingerprint.hexdigest() if fingerprint else None)
        except jobs.SealRefused as e:
            raise Problem(503, "Submission expired",
                          "the records reached Kafka after the submission's deadline; the job "
                          "was failed and nothing of it will be applied",
                          slug=ProblemType.BROKER_UNAVAILABLE, headers={"Retry-After": "5"}) from e
        sealed = True
    except BaseException as e:
        if recorded and not sealed:
            await asyncio.shield(jobs.fail_submission_now(ctx.pool, job_id, _failure_reason(e)))
            if isinstance(e, Problem):  # the failed job says which of its records were aborted
                e.extra.setdefault("job_id", job_id)
        raise
    finally:
        spool.close()
    metrics.records_received.labels(target.name, JobSource.HTTP).inc(count)
    log.info("job accepted", extra={"job_id": job_id, "target": target.name,
                                    "operation": operation, "records": count})
    return Accepted(job_id, target.name, operation, count)


def _broker_problem(error: BaseException, job_id: str) -> Problem:
    """The answer to envelopes the broker did not take in time."""
    if isinstance(error, MessageSizeTooLargeError | RecordTooLargeError):
        # Not an outage: retrying the same records would fail the same way. Only a broker
        # whose message limit is under MAX_ENVELOPE_BYTES gets here.
        log.warning("broker refused an envelope as too large",
                    extra={"job_id": job_id, "error": type(error).__name__,
                           "max_envelope_bytes": MAX_ENVELOPE_BYTES})
        return Problem(413, "Record too large",
                       "the broker refused these records as too large for one message; "
                       "nothing was accepted", slug=PayloadProblem.RECORD_TOO_LARGE)
    return Problem(503, "Broker unavailable",
                   "records could not be written to Kafka; nothing was accepted",
                   slug=ProblemType.BROKER_UNAVAILABLE, headers={"Retry-After": "5"})


def _failure_reason(error: BaseException) -> str:
    """Why a recorded job's submission failed, as its ``reason`` says (no record content)."""
    if isinstance(error, Problem):
        if error.status == 413 and isinstance(error.__cause__, KafkaError):
            return "a message was too large for the broker"
        if error.status == 503:
            return "broker unavailable during submission"
        return f"the payload was refused: {error.title}"
    if isinstance(error, asyncio.CancelledError | ConnectionError):
        return "the client went away before the payload was received whole"
    return "the submission failed"


async def body_chunks(
    content: AsyncIterator[bytes], fingerprint: Fingerprint | None
) -> AsyncIterator[bytes]:
    """Pass body chunks through, feeding the idempotency fingerprint (if any) on the way."""
    async for chunk in content:
        if fingerprint is not None:
            fingerprint.update(chunk)
        yield chunk
