"""A bulk submission: decode the body as a stream, spool envelopes, produce them, seal the job.

Envelopes are spooled to a temporary file while the body is read, and produced only
once the whole body has parsed: a payload rejected at its last byte (bad JSON, over
the size limit) has then written nothing to Kafka, and memory stays flat whatever the
payload size.
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
from schemas.targets import Target
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
from web.problems import Problem

log = logging.getLogger(__name__)

_FRAME = struct.Struct("!III")  # partition, records, length


class Spool:
    """Encoded envelopes on disk, in the order they were made."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory)
        self.envelopes = 0

    def append(self, partition: int, data: bytes, records: int) -> None:
        """Add one encoded envelope of ``records`` records bound for ``partition``."""
        self._file.write(_FRAME.pack(partition, records, len(data)))
        self._file.write(data)
        self.envelopes += 1

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
                      slug="unknown-target", known_targets=sorted(targets))
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
                          slug="conflicting-parameters")
    target_name = query_target or body_target
    operation = query_operation or body_operation or "insert"
    if not target_name:
        raise Problem(422, "Missing target", "give ?target=NAME or \"target\" in the body",
                      slug="missing-target")
    target = known_target(targets, target_name)
    if operation not in OPERATIONS:
        raise Problem(422, "Unknown operation",
                      f"operation must be one of {', '.join(OPERATIONS)}", slug="unknown-operation")
    return target, operation


Authorize = Callable[[str, str], None]
"""Raises (403) unless the caller may run the operation on the target."""


def fail_alone_if_oversize(
    codec: EnvelopeCodec, part: Envelope, data: bytes
) -> tuple[Envelope, bytes]:
    """A one-record envelope still over one Kafka message: that record fails instead.

    ``encode_bounded`` halves envelopes down to single records; one record alone over
    MAX_ENVELOPE_BYTES would be refused by the broker and sink the whole job with it.
    """
    if len(data) <= MAX_ENVELOPE_BYTES:
        return part, data
    failed = replace(part, items=[
        Item(item.index, None, RecordCode.TOO_LARGE,
             f"record {item.index}: over {MAX_ENVELOPE_BYTES} bytes once packed for Kafka")
        for item in part.items
    ])
    return failed, codec.encode(failed)


async def spool_payload(
    ctx: SubmissionContext, reader: PayloadReader, job_id: str,
    query_target: str | None, query_operation: str | None, spool: Spool,
    authorize: Authorize | None = None,
) -> tuple[Target, str, int]:
    """Decode, validate and pack every record; return (target, operation, record count).

    Target and operation are resolved, and ``authorize``d, as soon as the body has settled
    them and before any record is read: a refused request costs no more than its head.
    """
    buffers: list[list[Item]] = [[] for _ in range(ctx.partitions)]
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

    def flush(partition: int) -> None:
        assert preparer is not None
        envelope = Envelope(job_id, preparer.target.name, preparer.operation, buffers[partition])
        for part, data in ctx.codec.encode_bounded(envelope, MAX_ENVELOPE_BYTES):
            part, data = fail_alone_if_oversize(ctx.codec, part, data)
            spool.append(partition, data, len(part.items))
        buffers[partition] = []

    async for batch in reader.batches(on_settled=settle):
        assert preparer is not None  # the reader settles before its first record
        place, prepare, batch_size = preparer.place, preparer.prepare, ctx.batch_size
        for record in batch:
            if type(record) is ConvertedRecord:
                partition, item = place(record.index, record.row)
            elif type(record) is MalformedRecord:
                partition = record.index % ctx.partitions
                item = Item(record.index, None, record.code, record.message)
            else:
                assert isinstance(record, RawRecord)
                partition, item = prepare(record.index, record.value, record.textual)
            buffer = buffers[partition]
            buffer.append(item)
            if len(buffer) >= batch_size:
                flush(partition)
        count += len(batch)
    if preparer is None or not count:
        # No record at all: still check the parameters so a typo gets its own error.
        resolve_target(ctx.targets, query_target, query_operation, reader.target, reader.operation)
        raise Problem(422, "Empty payload", "the payload holds no records", slug="empty-payload")
    for partition, buffer in enumerate(buffers):
        if buffer:
            flush(partition)
    assert preparer is not None
    return preparer.target, preparer.operation, count


async def produce_spool(ctx: SubmissionContext, spool: Spool, job_id: str) -> None:
    """Send every spooled envelope and wait until the broker has acknowledged each."""
    pending: list[asyncio.Future[object]] = []
    job = job_id.encode()
    for partition, records, data in spool.replay():
        pending.append(await ctx.producer.send(
            ctx.records_topic, value=data, key=str(partition).encode(), partition=partition,
            headers=[(JOB_HEADER, job), (RECORDS_HEADER, str(records).encode())],
        ))
        if len(pending) >= 256:  # bound what waits in memory
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def submit(
    ctx: SubmissionContext, reader: PayloadReader,
    query_target: str | None, query_operation: str | None, *, timeout_s: float,
    tenant: str | None = None, principal: str | None = None,
    admit: Callable[[str, str, int], Awaitable[None]] | None = None,
    idempotency_key: str | None = None, fingerprint: Fingerprint | None = None,
    authorize: Authorize | None = None,
) -> Accepted:
    """Run one submission to the point where it is safe to answer 202.

    One deadline covers the whole submission: a body that does not arrive in time gets
    408, records that Kafka does not take in time get 503; neither leaves anything behind.
    ``authorize`` runs once target and operation are known, before any record is read.
    """
    job_id = str(uuid.uuid4())
    spool = Spool(ctx.spool_dir)
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        try:
            async with asyncio.timeout_at(deadline):
                with metrics.timed_stage("parse") as stage:
                    target, operation, count = await spool_payload(
                        ctx, reader, job_id, query_target, query_operation, spool, authorize
                    )
                    stage.records = count
        except TimeoutError as e:
            raise Problem(408, "Submission timed out",
                          f"the body was not received and parsed within {timeout_s:g} s; "
                          "nothing was accepted", slug="submission-timeout") from e
        if admit is not None:  # authorise (target, operation, count) before anything is produced
            await admit(target.name, operation, count)
        await jobs.create_receiving(
            ctx.pool, job_id, target.name, operation, count,
            seal_within_s=deadline - asyncio.get_running_loop().time(),
            tenant=tenant, principal=principal,
            idempotency_key=idempotency_key,
            # The body has been read whole by now: the fingerprint is final.
            request_fingerprint=fingerprint.hexdigest() if fingerprint is not None else None)
        try:
            async with asyncio.timeout_at(deadline):
                with metrics.timed_stage("produce", count):
                    await produce_spool(ctx, spool, job_id)
        except (KafkaError, OSError, asyncio.CancelledError, TimeoutError) as e:
            oversize = isinstance(e, MessageSizeTooLargeError | RecordTooLargeError)
            await asyncio.shield(jobs.fail_submission_now(
                ctx.pool, job_id, "a message was too large for the broker" if oversize
                else "broker unavailable during submission"))
            if isinstance(e, asyncio.CancelledError):
                raise
            if oversize:
                # Not an outage: retrying the same records would fail the same way. Only
                # a broker whose message limit is under MAX_ENVELOPE_BYTES gets here.
                log.warning("broker refused an envelope as too large",
                            extra={"job_id": job_id, "error": type(e).__name__,
                                   "max_envelope_bytes": MAX_ENVELOPE_BYTES})
                raise Problem(413, "Record too large",
                              "the broker refused these records as too large for one message; "
                              "nothing was accepted", slug=PayloadProblem.RECORD_TOO_LARGE) from e
            raise Problem(503, "Broker unavailable",
                          "records could not be written to Kafka; nothing was accepted",
                          slug="broker-unavailable", headers={"Retry-After": "5"}) from e
        try:
            await jobs.seal(ctx.pool, job_id)
        except jobs.SealRefused as e:
            raise Problem(503, "Submission expired",
                          "the records reached Kafka after the submission's deadline; the job "
                          "was failed and nothing of it will be applied",
                          slug="broker-unavailable", headers={"Retry-After": "5"}) from e
    finally:
        spool.close()
    metrics.records_received.labels(target.name, "http").inc(count)
    log.info("job accepted", extra={"job_id": job_id, "target": target.name,
                                    "operation": operation, "records": count})
    return Accepted(job_id, target.name, operation, count)


async def body_chunks(
    content: AsyncIterator[bytes], fingerprint: Fingerprint | None
) -> AsyncIterator[bytes]:
    """Pass body chunks through, feeding the idempotency fingerprint (if any) on the way."""
    async for chunk in content:
        if fingerprint is not None:
            fingerprint.update(chunk)
        yield chunk
