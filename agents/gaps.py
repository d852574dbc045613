"""Reading a range of a records partition directly, outside the consumer group.

The position committed with the rows is the truth about where a partition continues.
When the group hands a worker a partition further on than that (seen on the embedded
broker after a worker is killed), the missing range is read here, in order, before the
delivered events: nothing accepted is ever skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from app.kafka import MAX_REQUEST_BYTES, security_options
from app.settings import get_settings

# A gap is read a slice at a time so its envelopes are written without holding it all.
SLICE_RECORDS = 32
IDLE_POLLS_BEFORE_GIVING_UP = 30


class GapReader:
    """Reads [start, stop) of one partition of a topic with a group-less consumer."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic

    async def offsets(self, partitions: set[int]) -> tuple[dict[int, int], dict[int, int]]:
        """(earliest, end) offsets of the partitions, straight from the broker."""
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False,
                                    **security_options(get_settings()))
        await consumer.start()
        try:
            earliest = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return ({tp.partition: o for tp, o in earliest.items()},
                {tp.partition: o for tp, o in end.items()})

    async def read(
        self, partition: int, start: int, stop: int
    ) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
        """Yield the range's records in offset order, a slice at a time."""
        tp = TopicPartition(self._topic, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            # Retention may have removed the start of the range: read what is left.
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_REQUEST_BYTES,
            **security_options(get_settings()),
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            idle = 0
            while await consumer.position(tp) < stop and idle < IDLE_POLLS_BEFORE_GIVING_UP:
                fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=SLICE_RECORDS)
                records = [r for r in fetched.get(tp, []) if r.offset < stop]
                idle = 0 if records else idle + 1
                if records:
                    yield records
        finally:
            await consumer.stop()
