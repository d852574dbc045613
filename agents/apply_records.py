"""apply_record_envelopes: the batching agent that writes record envelopes into PostgreSQL.

Offsets are acknowledged only after the transaction holding a chunk has committed and
its outcomes are on the results topic; a crash in between redelivers the envelopes,
and the sink's ledger turns the second delivery into a re-publication, not a re-write.
Nothing is skipped silently: a message that cannot be read becomes failed outcomes (or,
when not even its job can be read, a row in ``sluice_undeliverable``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import faust
from faust.types import TP

from agents.batching import (
    chunk_by_records,
    find_gaps,
    job_header,
    next_positions,
    result_messages,
)
from agents.gaps import GapReader
from agents.resources import resources
from agents.streams import unacked_batches
from app import metrics
from app.faust_app import app, topics
from app.settings import get_settings
from app.store.errors import ErrorKind, WriteGaveUp, classify, row_error_message, sqlstate_of
from app.store.sink import BatchResult, JobNotSealed, Undeliverable
from schemas.envelope import (
    JOB_HEADER,
    MALFORMED_ENVELOPE,
    RECORDS_HEADER,
    Envelope,
    EnvelopeError,
    UnknownTargetError,
    salvage,
)
from schemas.vocabulary import RecordStatus
from schemas.write_plan import Verdict

log = logging.getLogger(__name__)
T = TypeVar("T")
settings = get_settings()

records_topic = app.topic(
    topics.records, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
)
results_topic = app.topic(
    topics.results, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
)

# Envelopes hold up to batch_size records each; a take gathers several so that small
# envelopes (small jobs, producer trickles) still make full-size transactions.
MAX_ENVELOPES_PER_TAKE = 32
WRITE_GAVE_UP = "write_failed"


async def until_done(attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a database step until it succeeds; nothing is skipped.

    A database that cannot be reached is waited for, with bounded exponential backoff:
    an outcome can only be recorded in the database, so giving up would lose the records.
    A database that answers but keeps refusing the step (lost races, a missing table) is
    retried ``settings.write_attempts`` times, then WriteGaveUp.
    """
    delay = 0.1
    refusals = 0
    while True:
        try:
            return await attempt()
        except JobNotSealed as e:
            metrics.write_retries.labels("job_receiving").inc()
            log.debug("job %s still receiving; batch waits", e)
            await asyncio.sleep(0.2)
            continue
        except Exception as e:
            kind = classify(e)
            if kind is ErrorKind.ROW:
                raise  # the sink isolates row errors itself; one here is a bug, not a retry
            if kind is not ErrorKind.UNAVAILABLE:
                refusals += 1
                if refusals >= settings.write_attempts:
                    log.error("%s refused %d times (SQLSTATE %s): giving the batch up",
                              what, refusals, sqlstate_of(e))
                    raise WriteGaveUp(sqlstate_of(e), refusals) from e
            metrics.write_retries.labels(type(e).__name__).inc()
            log.warning("%s failed (%s, %s); retrying in %.1fs", what, type(e).__name__,
                        kind.value, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.db_retry_max_s)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One records-topic message as read from the group or by the gap reader."""

    partition: int
    offset: int
    timestamp_s: float
    envelope: Envelope | None
    undeliverable: Undeliverable | None = None
    """Set when not even the job's records could be read from the message."""


Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None
"""Message headers as Kafka clients give them: pairs, or (Faust) sometimes a mapping."""


def _header(headers: Headers, name: str) -> str | None:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if key == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


def decode(
    partition: int, offset: int, timestamp_s: float, value: bytes | None,
    headers: Headers = None,
) -> Delivery:
    """Decode one records-topic message; a target not known yet is resolved by the writer."""
    metrics.message_age.observe(max(0.0, time.time() - timestamp_s))
    data = value or b""
    try:
        return Delivery(partition, offset, timestamp_s, resources.codec.decode(data))
    except UnknownTargetError:
        raise
    except EnvelopeError as e:
        log.error("undecodable envelope at partition %d offset %d: %s", partition, offset, e)
        metrics.undeliverable.inc()
        salvaged = salvage(data, MALFORMED_ENVELOPE, f"the envelope could not be read: {e}")
        if salvaged is not None:
            return Delivery(partition, offset, timestamp_s, salvaged)
        count = _header(headers, RECORDS_HEADER)
        return Delivery(partition, offset, timestamp_s, None, Undeliverable(
            partition, offset, _header(headers, JOB_HEADER),
            int(count) if count and count.isdigit() else 0, str(e)))


async def decode_resolving(
    partition: int, offset: int, timestamp_s: float, value: bytes | None,
    headers: Headers = None,
) -> Delivery:
    """decode, waiting up to ``unknown_target_wait_s`` for a target this worker does not know.

    Meanwhile the target definitions are re-read (a rolling deploy may have added the
    file); past the wait, the envelope's records fail with ``unknown_target``.
    """
    deadline = time.monotonic() + settings.unknown_target_wait_s
    while True:
        try:
            return decode(partition, offset, timestamp_s, value, headers)
        except UnknownTargetError as e:
            if await resources.reload_targets():
                continue
            if time.monotonic() >= deadline:
                log.error("no target %r after %.0f s: its records fail", e.target,
                          settings.unknown_target_wait_s)
                return Delivery(partition, offset, timestamp_s, e.failed)
            log.warning("envelope for unknown target %r at partition %d offset %d: waiting",
                        e.target, partition, offset)
            await asyncio.sleep(min(2.0, settings.unknown_target_wait_s))


async def expected_positions(partitions: set[int], topic: str) -> dict[int, int]:
    """Where each partition continues: the committed position, else the earliest offset kept."""
    stored = await until_done(lambda: resources.sink.positions(partitions), "position read")
    if missing := partitions - stored.keys():
        earliest = await app.consumer.earliest_offsets(*(TP(topic, p) for p in missing))
        stored.update({tp.partition: offset for tp, offset in earliest.items()})
    return stored


async def fill_gaps(arrivals: list[tuple[int, int]], topic: str, reader: GapReader) -> None:
    """Write what lies between each partition's committed position and its first delivery."""
    expected = await expected_positions({p for p, _ in arrivals}, topic)
    for partition, (start, stop) in find_gaps(arrivals, expected).items():
        metrics.partition_gaps.inc()
        log.warning("records partition %d delivered from %d but continues at %d: reading the gap",
                    partition, stop, start)
        async for records in reader.read(partition, start, stop):
            sent = await write_partition([
                await decode_resolving(partition, r.offset, r.timestamp / 1000, r.value, r.headers)
                for r in records
            ])
            await asyncio.gather(*sent)  # published before anything after the gap is acked


partition_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
"""The agent and the idle-partition check both write; one writer per partition at a time
keeps each partition's envelopes in order, and no partition waits for another's lock."""
last_delivery: dict[int, float] = {}
"""When the group last delivered an event of each records partition (monotonic seconds)."""
IDLE_PARTITION_S = 15.0
gap_reader = GapReader(settings.kafka_bootstrap or "", records_topic.get_topic_name())


@app.agent(records_topic)
async def apply_record_envelopes(stream: faust.StreamT[bytes]) -> None:
    """Decode envelopes, write them in chunks per partition, publish outcomes, then acknowledge."""
    await resources.wait_ready()
    topic = records_topic.get_topic_name()
    async for events in unacked_batches(
        stream, MAX_ENVELOPES_PER_TAKE, settings.flush_interval_s
    ):
        by_partition: dict[int, list[faust.EventT[bytes]]] = defaultdict(list)
        for event in events:
            by_partition[event.message.partition].append(event)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_take_partition(p, evs, topic))
                     for p, evs in by_partition.items()]
        with metrics.timed_stage("publish"):
            await asyncio.gather(*(sent for task in tasks for sent in task.result()))
        stamp = time.monotonic()
        for partition in by_partition:
            last_delivery[partition] = stamp
        for event in events:
            await stream.ack(event)


async def _take_partition(
    partition: int, events: list[faust.EventT[bytes]], topic: str
) -> list[Awaitable[object]]:
    """One partition's share of a take, under that partition's lock only."""
    async with partition_locks[partition]:
        await fill_gaps([(partition, e.message.offset) for e in events], topic, gap_reader)
        with metrics.timed_stage("consume") as stage:
            deliveries = [
                await decode_resolving(partition, e.message.offset, e.message.timestamp, e.value,
                                       e.message.headers)
                for e in events
            ]
            stage.records = sum(len(d.envelope.items) for d in deliveries if d.envelope)
        return await write_partition(deliveries)


@app.timer(interval=5.0)  # type: ignore[untyped-decorator]
async def catch_up_idle_partitions() -> None:
    """Read directly what an assigned partition holds but the group does not deliver.

    Seen on the embedded broker after a worker is killed: a partition assigned but
    never fetched. Work that is delivered late after all is then a redelivery, which
    the ledger recognises.
    """
    if not resources.ready:
        return
    topic = records_topic.get_topic_name()
    partitions = {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
    now_s = time.monotonic()
    idle = {p for p in partitions
            if now_s - last_delivery.setdefault(p, now_s) > IDLE_PARTITION_S}
    if not idle:
        return
    earliest, end = await gap_reader.offsets(idle)
    for partition in idle:
        # Checked now: next look after another idle period, not at every tick.
        last_delivery[partition] = now_s
    stored = await until_done(lambda: resources.sink.positions(idle), "position read")
    for partition in sorted(idle):
        async with partition_locks[partition]:
            start = max(stored.get(partition, 0), earliest[partition])
            if start >= end[partition]:
                continue
            metrics.partition_gaps.inc()
            log.warning("records partition %d has %d envelopes the group does not deliver: "
                        "reading them directly", partition, end[partition] - start)
            async for records in gap_reader.read(partition, start, end[partition]):
                sent = await write_partition([
                    await decode_resolving(partition, r.offset, r.timestamp / 1000, r.value,
                                           r.headers)
                    for r in records
                ])
                await asyncio.gather(*sent)
            last_delivery[partition] = time.monotonic()


async def write_chunk(
    envelopes: list[Envelope], positions: dict[int, int], undeliverable: list[Undeliverable]
) -> BatchResult:
    """Write one chunk and advance its partition's position in the same transaction.

    A chunk the database keeps refusing past the attempt bound is written once more with
    every record failed (``write_failed``, with the SQLSTATE), so that its jobs still end.
    """
    async def attempt() -> BatchResult:
        started = time.perf_counter()
        with metrics.timed_stage("write") as stage:
            result = await resources.sink.write(envelopes, positions, undeliverable)
            stage.records = len(result.outcomes)
        metrics.batch_seconds.observe(time.perf_counter() - started)
        return result

    try:
        return await until_done(attempt, "batch write")
    except WriteGaveUp as e:
        cause = e.__cause__
        verdict = Verdict(RecordStatus.FAILED, WRITE_GAVE_UP,
                          f"the database refused the batch {e.attempts} times (SQLSTATE "
                          f"{e.sqlstate}): {row_error_message(cause) if cause else ''}".rstrip(": "))
        return await until_done(
            lambda: resources.sink.write(envelopes, positions, undeliverable, give_up=verdict),
            "failed batch write")


async def write_partition(deliveries: list[Delivery]) -> list[Awaitable[object]]:
    """Write one partition's envelopes chunk by chunk; outcomes are sent after each commit.

    Returns the pending sends: the caller waits for them before acknowledging anything.
    """
    delivery_of = {id(d.envelope): d for d in deliveries if d.envelope is not None}
    undeliverable = [d.undeliverable for d in deliveries if d.undeliverable is not None]
    chunks = chunk_by_records(
        [d.envelope for d in deliveries if d.envelope is not None], settings.batch_size
    )
    if not chunks:
        positions = next_positions([(d.partition, d.offset) for d in deliveries])
        if undeliverable:
            result = await write_chunk([], positions, undeliverable)
            return [await _publish(result, [])]
        await until_done(lambda: resources.sink.advance(positions), "position write")
        return []
    sent: list[Awaitable[object]] = []
    for n, chunk in enumerate(chunks):
        covered = [delivery_of[id(e)] for e in chunk]
        last = n == len(chunks) - 1
        if last:
            covered += [d for d in deliveries if d.envelope is None]
        positions = next_positions([(d.partition, d.offset) for d in covered])
        result = await write_chunk(chunk, positions, undeliverable if last else [])
        sent.append(await _publish(result, chunk))
        tally = Counter(o.status for o in result.outcomes)
        for status, count in tally.items():
            metrics.records_written.labels(chunk[0].target, status).inc(count)
    return sent


async def _publish(result: BatchResult, chunk: list[Envelope]) -> Awaitable[object]:
    """Send a committed chunk's outcomes and job snapshots; returns when all are sent."""
    sends = [
        await results_topic.send(key=job_id.encode(), value=value, headers=job_header(result, job_id))
        for job_id, value in result_messages(result, chunk)
    ]
    return asyncio.gather(*sends)
