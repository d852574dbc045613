"""forward_producer_records: plain records from producers' input topics into record envelopes.

Producers key their messages however they like; this agent validates each record by
its target schema and re-keys it by conflict key, so that one row still always lands
on one partition of the records topic. The source offset is the record's index in its
stream job ("<topic>:<partition>"), which makes a redelivery harmless downstream.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import defaultdict
from typing import Any

import fastavro
import faust
import orjson

from agents.apply_records import records_topic
from agents.resources import resources
from agents.streams import unacked_batches
from app import metrics
from app.faust_app import app, topics
from app.settings import get_settings
from schemas.envelope import MAX_ENVELOPE_BYTES, Envelope, Item
from schemas.preparation import OPERATIONS, RecordPreparer
from schemas.targets import Target

log = logging.getLogger(__name__)
settings = get_settings()

OPERATION_HEADER = "sluice-operation"
CONTENT_TYPE_HEADER = "content-type"
AVRO_CONTENT_TYPES = frozenset({"application/avro", "avro/binary"})
DEFAULT_OPERATION = "insert"

input_topic = app.topic(
    *[topics.input_for(name) for name in sorted(resources.targets)],
    key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
)


def _header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key.lower() == name and value is not None:
            return bytes(value).decode("ascii", "replace").strip().lower()
    return None


def _plain_avro_schema(target: Target) -> Any:
    """The target schema without logical types: timestamps decode as epoch integers and
    go through the same conversion as JSON input."""
    schema = dict(target.avro_schema)
    fields = []
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict):
            t = t["type"]
        elif isinstance(t, list):
            t = [x["type"] if isinstance(x, dict) else x for x in t]
        fields.append({**f, "type": t})
    return fastavro.parse_schema({**schema, "fields": fields, "name": schema["name"] + "_plain"})


class ProducerRecordDecoder:
    """Decodes one producer message into an item for the records topic."""

    def __init__(self, targets: dict[str, Target]) -> None:
        self._target_of_topic = {topics.input_for(name): t for name, t in targets.items()}
        self._avro = {name: _plain_avro_schema(t) for name, t in targets.items()}
        self._preparers: dict[tuple[str, str], RecordPreparer] = {}

    def target_for(self, topic: str) -> Target:
        """The target whose input topic this is."""
        return self._target_of_topic[topic]

    def decode(self, topic: str, offset: int, value: bytes, headers: Any) -> tuple[str, int, Item]:
        """Return (operation, partition, item); a bad record becomes a failed item."""
        target = self._target_of_topic[topic]
        operation = _header(headers, OPERATION_HEADER) or DEFAULT_OPERATION
        if operation not in OPERATIONS:
            return DEFAULT_OPERATION, offset % settings.partitions, Item(
                offset, None, "unknown_operation",
                f"header {OPERATION_HEADER} must be one of {', '.join(OPERATIONS)}",
            )
        preparer = self._preparers.get((target.name, operation))
        if preparer is None:
            preparer = RecordPreparer(target, operation, settings.partitions)
            self._preparers[(target.name, operation)] = preparer
        try:
            if _header(headers, CONTENT_TYPE_HEADER) in AVRO_CONTENT_TYPES:
                raw = fastavro.schemaless_reader(io.BytesIO(value), self._avro[target.name])
            else:
                raw = orjson.loads(value)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this record's failure
            return operation, offset % settings.partitions, Item(
                offset, None, "malformed_record", f"cannot decode message: {type(e).__name__}"
            )
        partition, item = preparer.prepare(offset, raw)
        return operation, partition, item


@app.agent(input_topic)
async def forward_producer_records(stream: faust.StreamT[bytes]) -> None:
    """Batch producer records into envelopes on the records topic, then acknowledge."""
    await resources.wait_ready()
    decoder = ProducerRecordDecoder(resources.targets)
    async for events in unacked_batches(stream, settings.batch_size, settings.flush_interval_s):
        groups: dict[tuple[str, int, str, int], list[Item]] = defaultdict(list)
        for event in events:
            message = event.message
            operation, partition, item = decoder.decode(
                message.topic, message.offset, event.value or b"", message.headers
            )
            groups[(message.topic, message.partition, operation, partition)].append(item)
        sent = []
        for (topic, source_partition, operation, partition), items in groups.items():
            envelope = Envelope(
                job_id=f"{topic}:{source_partition}",
                target=decoder.target_for(topic).name,
                operation=operation,
                items=items,
                source_topic=topic,
                source_partition=source_partition,
            )
            sent.extend([
                await records_topic.send(key=str(partition).encode(), value=data, partition=partition)
                for data in resources.codec.encode_bounded(envelope, MAX_ENVELOPE_BYTES)
            ])
            metrics.records_received.labels(envelope.target, "kafka").inc(len(items))
        await asyncio.gather(*sent)
        for event in events:
            await stream.ack(event)
