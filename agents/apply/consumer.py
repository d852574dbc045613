"""The records consumer: the one delivery path from the records topic into PostgreSQL.

A plain Kafka consumer in a group of its own. On assignment, each partition is claimed
in the database (which fences its previous owner) and the consumer seeks to the
position stored there, so Kafka's committed offsets never decide what is applied (they
are committed too, after each take, for lag tooling only). Each assigned partition has
a task of its own with a bounded buffer: a slow, retrying or waiting partition is
paused on its own and never holds the others.

The log is read without holes: if fetching continues past the next expected offset, the
consumer seeks back there once; only if the log itself has nothing in between
(retention deleted it) does it go on, with an error line and a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from agents.apply.batching import job_header, result_messages
from agents.apply.decode import EnvelopeDecoder, RecordsMessage
from agents.apply.partition import ApplySettings, PartitionApplier
from agents.apply.retry import until_done
from agents.apply.seal_signals import SealListener
from agents.resources import resources
from agents.topics import results_topic
from app import metrics
from app.faust_app import app, leader_topic, topics
from app.kafka import GROUP_TIMEOUTS, MAX_REQUEST_BYTES, all_topics, ensure_topics, security_options
from app.settings import get_settings
from app.store.positions import Claim, Fenced
from app.store.sink import BatchResult
from app.topic_ids import TopicIds
from schemas.envelope import Envelope

log = logging.getLogger(__name__)

MAX_ENVELOPES_PER_TAKE = 32
"""Envelopes applied per take: several chunks' worth, so that small envelopes (small jobs,
producer trickles) still make full-size transactions."""
FETCHED_BYTES = 8 * 1024 * 1024
"""Per partition, envelope bytes fetched but not yet applied above which fetching it pauses."""
HELD_BACK_BYTES = 32 * 1024 * 1024
"""Per partition, bytes of envelopes held back for jobs still receiving above which fetching
it pauses (until those jobs are sealed or failed)."""


async def publish_outcomes(result: BatchResult, chunk: Sequence[Envelope]) -> Awaitable[object]:
    """Send a committed chunk's outcomes and job snapshots; the result completes once all are sent."""
    sends = [
        await results_topic.send(key=job_id.encode(), value=value, headers=job_header(result, job_id))
        for job_id, value in result_messages(result, chunk)
    ]
    return asyncio.gather(*sends)


class PartitionTask:
    """One assigned partition: claim it, seek to its position, apply takes until revoked."""

    def __init__(self, tp: TopicPartition, consumer: AIOKafkaConsumer,
                 make_applier: Callable[[Claim], PartitionApplier],
                 claim: Callable[[int], Awaitable[Claim]], idle_s: float) -> None:
        self.tp = tp
        self._consumer = consumer
        self._make_applier = make_applier
        self._claim = claim
        self._idle_s = idle_s
        self._buffer: deque[RecordsMessage] = deque()
        self._buffered_bytes = 0
        self._arrived = asyncio.Event()
        self._applier: PartitionApplier | None = None
        self._next_fetch: int | None = None
        """The offset expected next from the fetcher; earlier ones are read twice, later
        ones mean a hole (see _hole_before). None until the claimed position is sought."""
        self._reseeked_at: int | None = None
        self.task: asyncio.Task[None] | None = None

    def offer(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Buffer fetched messages (the fetch loop calls this); pause the partition when full."""
        if self._next_fetch is None:
            return  # fetched before the seek to the claimed position: read again after it
        fresh = [r for r in records if r.offset >= self._next_fetch]
        if not fresh or self._hole_before(fresh[0].offset):
            return
        for r in fresh:
            self._buffer.append(RecordsMessage(r.offset, r.timestamp / 1000, r.value or b"", r.headers))
            self._buffered_bytes += len(r.value or b"")
        self._next_fetch = fresh[-1].offset + 1
        self._arrived.set()
        if self._full():
            self._consumer.pause(self.tp)

    def wake(self) -> None:
        """Look again now (a job was sealed or failed). Unconditionally: the notice can come
        while a take is deciding what waits, before the held-back envelopes are set aside;
        a look with nothing held back costs nothing."""
        self._arrived.set()

    def _hole_before(self, first: int) -> bool:
        """True if fetching continued past the next offset expected and is read again.

        The first time, the consumer seeks back to the expected offset; if the log again
        continues past it, the offsets in between are gone from the log, and reading goes on.
        """
        expected = self._next_fetch
        assert expected is not None
        if first <= expected:
            return False
        if self._reseeked_at != expected:
            log.warning("records partition %d continued at %d, expected %d: reading again",
                        self.tp.partition, first, expected)
            self._reseeked_at = expected
            self._consumer.seek(self.tp, expected)
            return True
        metrics.partition_gaps.inc()
        log.error("records partition %d: offsets %d to %d are not in the log (deleted by retention"
                  " before they were applied); their jobs will stall", self.tp.partition,
                  expected, first - 1, extra={"alert": "records_lost"})
        return False

    def _full(self, share: float = 1.0) -> bool:
        """True if more than ``share`` of either bound is used."""
        held = self._applier.waiting_bytes if self._applier is not None else 0
        return self._buffered_bytes > FETCHED_BYTES * share or held > HELD_BACK_BYTES * share

    async def run(self) -> None:
        """Claim, seek, then apply takes in log order until cancelled."""
        claim = await self._claim(self.tp.partition)
        self._applier = applier = self._make_applier(claim)
        if claim.next_offset is None:
            await self._consumer.seek_to_beginning(self.tp)
            self._next_fetch = await self._consumer.position(self.tp)
        else:
            self._consumer.seek(self.tp, claim.next_offset)
            self._next_fetch = claim.next_offset
        self._consumer.resume(self.tp)
        log.info("records partition %d claimed (epoch %d) at offset %s", self.tp.partition,
                 claim.epoch, claim.next_offset)
        try:
            await self._apply_until_revoked(applier)
        except Fenced as e:
            # Another worker claimed the partition, so the group has already moved it
            # away from this one: the rebalance this worker is about to see revokes this
            # task, and a new task claims the partition afresh if it comes back here.
            self._consumer.pause(self.tp)
            log.warning("stopped applying: %s", e)
        finally:
            await applier.close()

    async def _apply_until_revoked(self, applier: PartitionApplier) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._idle_s if applier.waiting else None):
                    await self._arrived.wait()
            self._arrived.clear()
            take = self._take()
            await applier.apply(take)
            metrics.waiting_envelope_bytes.set(applier.waiting_bytes)
            if not self._full(share=0.5):
                self._consumer.resume(self.tp)
            if take and applier.position is not None:
                await self._commit(applier.position)
            if self._buffer:
                self._arrived.set()

    def _take(self) -> list[RecordsMessage]:
        take: list[RecordsMessage] = []
        while self._buffer and len(take) < MAX_ENVELOPES_PER_TAKE:
            message = self._buffer.popleft()
            self._buffered_bytes -= len(message.value)
            take.append(message)
        return take

    async def _commit(self, position: int) -> None:
        """Commit the position to Kafka too, for lag tools; the database's copy is the truth."""
        try:
            await self._consumer.commit({self.tp: position})
        except KafkaError as e:  # a rebalance under way: the next take commits again
            log.debug("kafka offset commit skipped: %s", type(e).__name__)


class RecordsConsumer(faust.Service):
    """Runs the records consumer and one PartitionTask per assigned partition."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[int, PartitionTask] = {}
        self._joined = asyncio.Event()
        self._seals: SealListener | None = None
        self._topic_ids: TopicIds | None = None

    async def on_start(self) -> None:
        """Make sure the topic exists, then join the group (assignment comes later)."""
        settings = get_settings()
        await resources.wait_ready()
        _, dsn, _ = settings.require_services()
        self._seals = SealListener(dsn, self._wake_waiting)
        self._seals.start()
        self._topic_ids = TopicIds(settings)
        assert settings.kafka_bootstrap is not None
        # Every topic this worker sends to (Faust declares none): a worker may start
        # before any web process has created them.
        await ensure_topics(settings.kafka_bootstrap, all_topics(topics, sorted(resources.targets)),
                            settings.partitions)
        await ensure_topics(settings.kafka_bootstrap, [leader_topic(settings.worker_id)], 1)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.worker_id}.records",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_REQUEST_BYTES,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            **GROUP_TIMEOUTS,
            **security_options(settings),
        )
        await self._consumer.start()
        self._consumer.subscribe([topics.records], listener=_Rebalance(self))
        self._joined.set()

    async def on_stop(self) -> None:
        """Stop the partitions' tasks, then leave the group (its partitions move at once)."""
        await self.revoke(list(self._partitions))
        if self._seals is not None:
            await self._seals.stop()
        if self._consumer is not None:
            await self._consumer.stop()

    async def _records_topic_id(self) -> str | None:
        """The records topic's current ID, so that a claim sees a topic created anew; None
        when the broker does not answer (the position is then kept as it is)."""
        assert self._topic_ids is not None
        try:
            return (await self._topic_ids.of([topics.records])).get(topics.records)
        except Exception as e:  # noqa: BLE001 - a claim must not fail for want of it
            log.warning("records topic id not read (%s)", type(e).__name__)
            return None

    def _wake_waiting(self) -> None:
        for task in self._partitions.values():
            task.wake()

    def assign(self, partitions: Sequence[int]) -> None:
        """Start a task per newly assigned partition; it fetches nothing until claimed."""
        consumer = self._consumer
        assert consumer is not None
        settings = get_settings()
        decoder = EnvelopeDecoder(resources.codec, resources.reload_targets,
                                  settings.unknown_target_wait_s)
        apply_settings = ApplySettings.of(settings)

        def make_applier(claim: Claim) -> PartitionApplier:
            return PartitionApplier(claim, resources.sink, publish_outcomes, decoder, apply_settings)

        # One look at the records topic's ID for the whole assignment, shared by its claims.
        records_topic_id = asyncio.ensure_future(self._records_topic_id())

        async def claim(partition: int) -> Claim:
            topic_id = await asyncio.shield(records_topic_id)  # one claim cancelled spares the rest
            claims = await until_done(lambda: resources.sink.claim([partition], topic_id),
                                      "partition claim",
                                      attempts=settings.write_attempts,
                                      max_delay_s=settings.db_retry_max_s)
            return claims[partition]

        for partition in partitions:
            tp = TopicPartition(topics.records, partition)
            consumer.pause(tp)
            task = PartitionTask(tp, consumer, make_applier, claim, settings.flush_interval_s)
            task.task = asyncio.create_task(self._guard(task), name=f"apply-records-{partition}")
            self._partitions[partition] = task
        metrics.partitions_assigned.set(len(self._partitions))

    async def revoke(self, partitions: Sequence[int]) -> None:
        """Stop the tasks of partitions this worker no longer owns (what they had not
        published is read again by the next owner, and found in the ledger)."""
        tasks = [t for p in partitions if (t := self._partitions.pop(p, None)) and t.task]
        metrics.partitions_assigned.set(len(self._partitions))
        for t in tasks:
            assert t.task is not None
            t.task.cancel()
        for t in tasks:
            assert t.task is not None
            with contextlib.suppress(asyncio.CancelledError):
                await t.task

    async def _guard(self, task: PartitionTask) -> None:
        """A partition task that fails unexpectedly stops the worker, loudly: a partition
        silently not applied would stall every job on it."""
        try:
            await task.run()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            log.exception("records partition %d failed; stopping the worker", task.tp.partition)
            await self.crash(e)

    @faust.Service.task
    async def _fetch(self) -> None:
        """Fetch for every assigned partition and hand each its messages."""
        await self._joined.wait()
        consumer = self._consumer
        assert consumer is not None
        timeout_ms = int(get_settings().flush_interval_s * 1000)
        while not self.should_stop:
            fetched = await consumer.getmany(timeout_ms=timeout_ms)
            for tp, records in fetched.items():
                task = self._partitions.get(tp.partition)
                if task is not None:
                    task.offer(records)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: RecordsConsumer) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service.revoke([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._service.assign(sorted(tp.partition for tp in assigned))


records_consumer = RecordsConsumer()
app.service(records_consumer)  # type: ignore[arg-type]  # faust accepts instances too
