"""apply_record_envelopes: the batching agent that writes record envelopes into PostgreSQL.

Offsets are acknowledged only after the transaction holding a batch has committed and
its outcomes are on the results topic; a crash in between redelivers the envelopes,
and the sink's ledger turns the second delivery into a re-publication, not a re-write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
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
from app.sink import BatchResult, JobNotSealed
from schemas.envelope import Envelope, EnvelopeError
from tables.record_hashes import now, remember_applied, was_applied_recently

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

_TRANSIENT = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
              asyncpg.CannotConnectNowError, asyncpg.PostgresError, asyncio.TimeoutError)


async def until_done(attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a database step, retrying transient failures with bounded exponential backoff.

    Nothing is skipped: a database outage stalls the partition, it does not drop it.
    """
    delay = 0.1
    while True:
        try:
            return await attempt()
        except JobNotSealed as e:
            metrics.write_retries.labels("job_receiving").inc()
            log.debug("job %s still receiving; batch waits", e)
            await asyncio.sleep(0.2)
        except _TRANSIENT as e:
            metrics.write_retries.labels(type(e).__name__).inc()
            log.warning("%s failed (%s); retrying in %.1fs", what, type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.db_retry_max_s)


async def write_until_committed(
    envelopes: list[Envelope], positions: dict[int, int]
) -> BatchResult:
    """Write one chunk and advance its partitions' positions in the same transaction."""
    current = now()

    def seen_recently(digest: bytes, at: float = current) -> bool:
        return was_applied_recently(digest, at)

    async def attempt() -> BatchResult:
        started = time.perf_counter()
        with metrics.timed_stage("write") as stage:
            result = await resources.sink.write(envelopes, seen_recently, positions)
            stage.records = len(result.outcomes)
        metrics.batch_seconds.observe(time.perf_counter() - started)
        return result

    return await until_done(attempt, "batch write")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope as read from the records topic, by the group or by the gap reader."""

    partition: int
    offset: int
    timestamp_s: float
    envelope: Envelope | None
    """None when the message could not be decoded (logged, skipped, position advanced)."""


def decode(partition: int, offset: int, timestamp_s: float, value: bytes | None) -> Delivery:
    """Decode one records-topic message."""
    try:
        envelope: Envelope | None = resources.codec.decode(value or b"")
    except (EnvelopeError, KeyError) as e:
        # Its position still advances with the next write: a poison message must not
        # hold its partition for ever.
        log.error("skipping undecodable envelope at partition %d offset %d: %s",
                  partition, offset, e)
        envelope = None
    metrics.message_age.observe(max(0.0, time.time() - timestamp_s))
    return Delivery(partition, offset, timestamp_s, envelope)


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
            await write_deliveries(
                [decode(partition, r.offset, r.timestamp / 1000, r.value) for r in records]
            )


# The agent and the idle-partition check both write; one at a time keeps each
# partition's envelopes in order.
write_lock = asyncio.Lock()
last_delivery: dict[int, float] = {}
"""When the group last delivered an event of each records partition (monotonic seconds)."""
IDLE_PARTITION_S = 15.0
gap_reader = GapReader(settings.kafka_bootstrap or "", records_topic.get_topic_name())


@app.agent(records_topic)
async def apply_record_envelopes(stream: faust.StreamT[bytes]) -> None:
    """Decode envelopes, write them in batches, publish outcomes, then acknowledge."""
    await resources.wait_ready()
    topic = records_topic.get_topic_name()
    async for events in unacked_batches(
        stream, MAX_ENVELOPES_PER_TAKE, settings.flush_interval_s
    ):
        arrivals = [(e.message.partition, e.message.offset) for e in events]
        async with write_lock:
            await fill_gaps(arrivals, topic, gap_reader)
            with metrics.timed_stage("consume") as stage:
                deliveries = [
                    decode(e.message.partition, e.message.offset, e.message.timestamp, e.value)
                    for e in events
                ]
                stage.records = sum(len(d.envelope.items) for d in deliveries if d.envelope)
            await write_deliveries(deliveries)
        stamp = time.monotonic()
        for partition, _ in arrivals:
            last_delivery[partition] = stamp
        for event in events:
            await stream.ack(event)


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
    async with write_lock:
        stored = await until_done(lambda: resources.sink.positions(idle), "position read")
        for partition in sorted(idle):
            start = max(stored.get(partition, 0), earliest[partition])
            if start >= end[partition]:
                continue
            metrics.partition_gaps.inc()
            log.warning("records partition %d has %d envelopes the group does not deliver: "
                        "reading them directly", partition, end[partition] - start)
            async for records in gap_reader.read(partition, start, end[partition]):
                await write_deliveries(
                    [decode(partition, r.offset, r.timestamp / 1000, r.value) for r in records]
                )
            last_delivery[partition] = time.monotonic()


async def write_deliveries(deliveries: list[Delivery]) -> None:
    """Write envelopes, partitions side by side; return once every outcome is published.

    Partitions hold disjoint keys (and so disjoint record hashes), so their transactions
    do not touch the same rows except job counters, which every transaction locks in
    job-id order. Writing them concurrently keeps PostgreSQL busy while this process
    decodes and publishes; within a partition, chunks stay in offset order.
    """
    by_partition: dict[int, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        by_partition[delivery.partition].append(delivery)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(write_partition(batch)) for batch in by_partition.values()]
    with metrics.timed_stage("publish"):
        await asyncio.gather(*(sent for task in tasks for sent in task.result()))


async def write_partition(deliveries: list[Delivery]) -> list[Awaitable[object]]:
    """Write one partition's envelopes chunk by chunk; outcomes are sent after each commit.

    Returns the pending sends: the caller waits for them before acknowledging anything.
    """
    delivery_of = {id(d.envelope): d for d in deliveries if d.envelope is not None}
    chunks = chunk_by_records(
        [d.envelope for d in deliveries if d.envelope is not None], settings.batch_size
    )
    if not chunks:
        positions = next_positions([(d.partition, d.offset) for d in deliveries])
        await until_done(lambda: resources.sink.advance(positions), "position write")
        return []
    sent: list[Awaitable[object]] = []
    for n, chunk in enumerate(chunks):
        covered = [delivery_of[id(e)] for e in chunk]
        if n == len(chunks) - 1:
            covered += [d for d in deliveries if d.envelope is None]
        positions = next_positions([(d.partition, d.offset) for d in covered])
        result = await write_until_committed(chunk, positions)
        by_envelope: dict[int, list[bytes]] = defaultdict(list)
        for envelope, digest in result.applied_hashes:
            by_envelope[id(envelope)].append(digest)
        stamp = now()
        with metrics.timed_stage("dedup", len(result.applied_hashes)):
            for envelope_id, digests in by_envelope.items():
                d = delivery_of[envelope_id]
                remember_applied(d.partition, d.offset, digests, stamp)
        for job_id, value in result_messages(result, chunk):
            sent.append(await results_topic.send(
                key=job_id.encode(), value=value, headers=job_header(result, job_id)
            ))
        tally = Counter(o.status for o in result.outcomes)
        for status, count in tally.items():
            metrics.records_written.labels(chunk[0].target, status).inc(count)
    return sent
