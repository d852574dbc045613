"""forward_producer_records: plain records from producers' input topics into record envelopes.

Producers key their messages however they like; the forwarder validates each record by
its target schema and re-keys it by conflict key, so that one row still always lands
on one partition of the records topic. The source offset is the record's index in its
stream job ("<topic>:<partition>:<topic id>"), which makes a redelivery harmless
downstream; the topic ID makes a recreated topic a new stream, not a repeat of the old.

Producers write one Kafka message per record, and a Faust agent costs about 100 µs per
event on this machine (a ceiling near 9,000 records/s before any work). So the
forwarder is a plain consumer in a group of its own, fetching thousands of messages per
call, and commits their offsets only once the envelopes made of them are acknowledged
by the broker: at least once, with the ledger downstream making a repeat harmless.

Each topic accepts the operations ``SLUICE_INPUT_OPERATIONS`` grants its target (inserts
only by default), and every forwarded batch writes audit lines: see agents/input_audit.py
for why the producer's principal is only ever an asserted one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import faust
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from agents.input_audit import InputTally, write_audit
from agents.producer_records import ProducerRecordDecoder, envelopes_for
from agents.resources import resources
from agents.topics import records_topic
from app import metrics
from app.faust_app import app, topics
from app.input_policy import InputOperations
from app.kafka import GROUP_TIMEOUTS, security_options
from app.settings import get_settings
from app.store import jobs as job_store
from app.topic_ids import TopicIds
from schemas.envelope import MAX_ENVELOPE_BYTES, envelope_headers
from schemas.vocabulary import JobSource

log = logging.getLogger(__name__)
settings = get_settings()

TOPIC_ID_CHECK_S = 5.0
"""How often input topics are checked for having been recreated while nothing arrives."""
FETCH_RECORDS = 8_000
"""Messages per fetch: several full envelopes' worth, so that envelopes stay large."""


class ProducerRecordForwarder(faust.Service):
    """Consumes the input topics in batches and forwards them as envelopes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._consumer: AIOKafkaConsumer | None = None
        self._topic_ids: TopicIds | None = None
        self._known_ids: dict[str, str] = {}

    async def on_start(self) -> None:
        """Join the forwarder's consumer group (its own: not the Faust app's)."""
        self._consumer = AIOKafkaConsumer(
            *[topics.input_for(name) for name in sorted(resources.targets)],
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.worker_id}.forwarder",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=FETCH_RECORDS,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            # A subscribed topic deleted and created again is seen, and its partitions
            # assigned, only when metadata is refreshed: Kafka's default of 5 minutes
            # would leave a recreated input topic unread that long.
            metadata_max_age_ms=int(TOPIC_ID_CHECK_S * 1000),
            **GROUP_TIMEOUTS,
            **security_options(settings),
        )
        await self._consumer.start()
        self._topic_ids = TopicIds(settings)

    async def _same_incarnation(
        self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> bool:
        """True if every fetched topic had the same ID before and after the fetch, so that
        its records are named by the right incarnation. Otherwise the fetch is dropped and
        read again: a topic not looked at yet from where it was fetched, a recreated one
        from its beginning."""
        assert self._consumer is not None
        before = dict(self._known_ids)
        rewound = await self._rewind_recreated({tp.topic for tp in fetched})
        fetched_topics = {tp.topic for tp in fetched}
        unchanged = {t for t in fetched_topics if t in before and before[t] == self._known_ids.get(t)}
        for tp, messages in fetched.items():
            if tp.topic not in unchanged and tp.topic not in rewound:
                self._consumer.seek(tp, messages[0].offset)
        return unchanged == fetched_topics

    async def _rewind_recreated(self, topics_seen: set[str]) -> set[str]:
        """Read input topics created anew since their records were last forwarded from
        their beginning: their offsets started over, below where this group had got to.

        The last incarnation forwarded is known in memory, else from the stream jobs in
        the database (a forwarder restarted after the topic was recreated). Returns the
        topics rewound.
        """
        assert self._consumer is not None and self._topic_ids is not None
        assigned = self._consumer.assignment()
        names = topics_seen | {tp.topic for tp in assigned}
        current = await self._topic_ids.of(names)
        rewound: set[str] = set()
        for topic, topic_id in current.items():
            last = self._known_ids.get(topic)
            if last is None:
                last = await job_store.last_stream_topic_id(resources.pool, topic)
            self._known_ids[topic] = topic_id
            if last is not None and last != topic_id:
                log.warning("input topic %s was recreated: reading it from its beginning", topic)
                rewound.add(topic)
                for tp in assigned:
                    if tp.topic == topic:
                        await self._consumer.seek_to_beginning(tp)
        if not current.keys() >= topics_seen:
            await asyncio.sleep(1.0)  # a topic being deleted: look again shortly
        return rewound

    async def on_stop(self) -> None:
        """Leave the group; what was forwarded but not committed comes again, harmlessly."""
        if self._consumer is not None:
            await self._consumer.stop()

    @faust.Service.task
    async def _forward(self) -> None:
        await resources.wait_ready()
        operations = InputOperations(settings.input_operations)
        if unknown := operations.unknown_targets(resources.targets):
            log.warning("SLUICE_INPUT_OPERATIONS names targets no target file defines",
                        extra={"targets": unknown})
        log.info("input topics accept", extra={
            "input_operations": operations.describe(resources.targets)})
        decoder = ProducerRecordDecoder(resources.targets, topics, settings.partitions,
                                        operations=operations)
        next_look = 0.0
        while not self.should_stop:
            assert self._consumer is not None
            try:
                if time.monotonic() >= next_look:  # a topic recreated while nothing arrives
                    await self._rewind_recreated(set())
                    next_look = time.monotonic() + TOPIC_ID_CHECK_S
            except (KafkaError, OSError, asyncpg.PostgresError) as e:
                log.warning("input topic ids not checked (%s)", type(e).__name__)
            fetched = await self._consumer.getmany(timeout_ms=int(settings.flush_interval_s * 1000))
            if not fetched:
                continue
            try:
                if not await self._same_incarnation(fetched):
                    continue
                await forward(fetched, decoder, self._known_ids)
            except (KafkaError, ProducerSendError, OSError, asyncpg.PostgresError) as e:
                # Not forwarded (or not all of it): read the same records again later,
                # rather than commit past them or stop the worker.
                log.warning("forwarding failed (%s); retrying", type(e).__name__)
                for tp, messages in fetched.items():
                    self._consumer.seek(tp, messages[0].offset)
                await asyncio.sleep(1.0)
                continue
            try:
                await self._consumer.commit(
                    {tp: messages[-1].offset + 1 for tp, messages in fetched.items()}
                )
            except KafkaError as e:
                # A rebalance took the partitions: their new owner forwards them again,
                # which the ledger downstream makes harmless.
                log.warning("input offsets not committed (%s)", type(e).__name__)


async def forward(
    fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], decoder: ProducerRecordDecoder,
    topic_ids: dict[str, str],
) -> None:
    """Send the fetched records as envelopes, wait until the broker has every one, then
    write the batch's audit lines (again if the batch is forwarded again: at least once)."""
    tally = InputTally()
    with metrics.timed_stage("forward", sum(len(m) for m in fetched.values())):
        sent = []
        for partition, envelope in envelopes_for(
            (m for messages in fetched.values() for m in messages), decoder, topic_ids, tally
        ):
            sent.extend([
                await records_topic.send(key=str(partition).encode(), value=data, partition=partition,
                                         headers=envelope_headers(part))
                for part, data in resources.codec.encode_bounded(envelope, MAX_ENVELOPE_BYTES)
            ])
            metrics.records_received.labels(envelope.target, JobSource.KAFKA).inc(len(envelope.items))
        await asyncio.gather(*sent)
    write_audit(tally)


forwarder = ProducerRecordForwarder()
app.service(forwarder)  # type: ignore[arg-type]  # faust accepts instances too
