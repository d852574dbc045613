"""Pure parts of the producer-record forwarder: one message in, one envelope item out.

Producer messages carry one record each, JSON or (by content-type header) schemaless
Avro; the operation comes from a header, and must be one the topic accepts
(``SLUICE_INPUT_OPERATIONS``, inserts only by default). A record that cannot be decoded
or validated, or asks for an operation its topic does not accept, becomes a failed item,
reported like any other failed record, never dropped and never applied. Its envelope
carries it as received (``schemas.received``): a JSON message's text, or an Avro one's
decoded value as JSON (none when it does not decode).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import fastavro
import orjson
from aiokafka import ConsumerRecord

from agents.apply.decode import header
from agents.input_audit import InputTally, asserted_principal
from app.input_policy import OPERATION_NOT_ALLOWED, InputOperations
from app.topics import TopicNames
from schemas.envelope import Envelope, Item
from schemas.preparation import OPERATIONS, RecordPreparer
from schemas.received import RecordText, json_text, record_text
from schemas.targets import Target

OPERATION_HEADER = "sluice-operation"
CONTENT_TYPE_HEADER = "content-type"
AVRO_CONTENT_TYPES = frozenset({"application/avro", "avro/binary"})
DEFAULT_OPERATION = "insert"


def _header(headers: Any, name: str) -> str | None:
    value = header(headers, name, any_case=True)
    return None if value is None else value.strip().lower()


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

    def __init__(self, targets: dict[str, Target], topics: TopicNames, partitions: int, *,
                 operations: InputOperations) -> None:
        self._partitions = partitions
        self._target_of_topic = {topics.input_for(name): t for name, t in targets.items()}
        self._accepted = {topics.input_for(name): operations.accepted(name) for name in targets}
        self._avro = {name: _plain_avro_schema(t) for name, t in targets.items()}
        self._preparers: dict[tuple[str, str], RecordPreparer] = {}

    def target_for(self, topic: str) -> Target:
        """The target whose input topic this is."""
        return self._target_of_topic[topic]

    def decode(self, topic: str, offset: int, value: bytes, headers: Any
               ) -> tuple[str, int, Item, RecordText | None]:
        """Return (operation, partition, item, text); a bad record becomes a failed item, with
        its text as received (the module docstring says which)."""
        target = self._target_of_topic[topic]
        operation = _header(headers, OPERATION_HEADER) or DEFAULT_OPERATION
        avro = _header(headers, CONTENT_TYPE_HEADER) in AVRO_CONTENT_TYPES
        if operation not in OPERATIONS:
            return DEFAULT_OPERATION, offset % self._partitions, Item(
                offset, None, "unknown_operation",
                f"header {OPERATION_HEADER} must be one of {', '.join(OPERATIONS)}",
            ), self._text(target, value, avro)
        accepted = self._accepted[topic]
        if operation not in accepted:
            # Under its own operation, so that the audit and the results say what was asked.
            return operation, offset % self._partitions, Item(
                offset, None, OPERATION_NOT_ALLOWED,
                f"this input topic does not accept {operation}; it accepts "
                f"{', '.join(sorted(accepted)) or 'nothing'} (SLUICE_INPUT_OPERATIONS)",
            ), self._text(target, value, avro)
        preparer = self._preparers.get((target.name, operation))
        if preparer is None:
            preparer = RecordPreparer(target, operation, self._partitions)
            self._preparers[(target.name, operation)] = preparer
        if not avro and (row := preparer.decode_json(value)) is not None:
            return (operation, *preparer.place(offset, row), None)
        try:
            raw = self._decoded(target, value, avro)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this record's failure
            return operation, offset % self._partitions, Item(
                offset, None, "malformed_record", f"cannot decode message: {type(e).__name__}"
            ), None if avro else record_text(value)
        partition, item = preparer.prepare(offset, raw)
        if item.row is not None:
            return operation, partition, item, None
        return operation, partition, item, json_text(raw) if avro else record_text(value)

    def _decoded(self, target: Target, value: bytes, avro: bool) -> Any:
        if avro:
            return fastavro.schemaless_reader(io.BytesIO(value), self._avro[target.name])
        return orjson.loads(value)

    def _text(self, target: Target, value: bytes, avro: bool) -> RecordText | None:
        """A refused message's text: as it came for JSON, decoded for Avro (None if it is not)."""
        if not avro:
            return record_text(value)
        try:
            return json_text(self._decoded(target, value, avro))
        except Exception:  # noqa: BLE001 - binary that is not Avro: nothing to show
            return None


def stream_job_id(topic: str, partition: int, topic_id: str) -> str:
    """The job of one input partition's records: one per topic incarnation, because a topic
    deleted and created again starts its offsets (the records' indexes) over."""
    return f"{topic}:{partition}:{topic_id}"


def envelopes_for(
    messages: Iterable[ConsumerRecord[bytes, bytes]], decoder: ProducerRecordDecoder,
    topic_ids: Mapping[str, str], tally: InputTally | None = None,
) -> list[tuple[int, Envelope]]:
    """Producer messages as envelopes, in log order; ``topic_ids`` names each topic's incarnation.
    Each record is also counted in ``tally``, if given, for the audit line.

    Records of one source partition bound for one records partition are packed in runs
    of one operation: an operation change starts a new envelope, so that an insert, a
    delete and an insert of one key reach the sink in that order (grouping by operation
    would apply both inserts before the delete).
    """
    envelopes: list[tuple[int, Envelope]] = []
    open_runs: dict[tuple[str, int, int], tuple[str, list[Item], dict[int, RecordText]]] = {}
    for message in messages:
        operation, partition, item, text = decoder.decode(
            message.topic, message.offset, message.value or b"", message.headers
        )
        stream = (message.topic, message.partition, partition)
        run = open_runs.get(stream)
        if run is None or run[0] != operation:
            run = (operation, [], {})
            open_runs[stream] = run
            envelopes.append((partition, Envelope(
                job_id=stream_job_id(message.topic, message.partition, topic_ids[message.topic]),
                target=decoder.target_for(message.topic).name,
                operation=operation,
                items=run[1],
                source_topic=message.topic,
                source_partition=message.partition,
                received=run[2],
            )))
        run[1].append(item)
        if text is not None:
            run[2][item.index] = text
        if tally is not None:
            tally.count(message.topic, decoder.target_for(message.topic).name, operation,
                        asserted_principal(message.headers), item)
    return envelopes
