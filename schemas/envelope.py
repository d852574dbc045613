"""The record envelope: how records travel through the records topic, many per message.

One Kafka message per record caps a Faust worker near 9,000 records/s, so the ingress
packs up to a batch of records bound for one partition into one envelope.

Version 2 carries timestamps and dates as orjson writes them (RFC 3339, ISO 8601): the
web encodes a row with no per-value Python at all, and ``fromisoformat`` (C) reads a
value back three times faster than version 1's epoch microseconds were turned into a
datetime. Version 1 envelopes (epoch microseconds, epoch days) are still read, so
records written before an upgrade are applied after it.

Records that failed at the ingress travel with their text as received (``schemas.received``)
in a member of their own, ``"rec"``, beside the items: items keep their four members, so
a worker of the release before, which unpacks four and ignores other members, still
applies a newer web's envelopes (their failures then come without their records).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from app.errors import SluiceError
from schemas.received import RecordText
from schemas.targets import ColumnType, Target

ENVELOPE_VERSION = 2
_V1 = 1
MAX_ENVELOPE_BYTES = 900_000
"""Below the 1 MB default message size limit of Kafka brokers, with room for headers."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)


class EnvelopeError(SluiceError):
    """An envelope on the records topic that cannot be decoded."""


JOB_HEADER = "sluice-job"
RECORDS_HEADER = "sluice-records"
"""Records-topic message headers naming the envelope's job and record count, so that even
a message whose body cannot be read still tells whose records it held."""

UNKNOWN_TARGET = "unknown_target"
MALFORMED_ENVELOPE = "malformed_envelope"


class UnknownTargetError(EnvelopeError):
    """An envelope for a target this process does not know (yet: a rolling deploy may add it)."""

    def __init__(self, target: str, failed: Envelope) -> None:
        super().__init__(f"unknown target {target!r}")
        self.target = target
        self.failed = failed
        """The envelope with every record failed as unknown_target, should the target never come."""


def envelope_headers(envelope: Envelope) -> list[tuple[str, bytes]]:
    """The headers every records-topic message carries."""
    return [(JOB_HEADER, envelope.job_id.encode()), (RECORDS_HEADER, str(len(envelope.items)).encode())]


def salvage(data: bytes, code: str, message: str) -> Envelope | None:
    """An envelope whose rows cannot be read, with every record it names failed; None if even
    its job and record indexes cannot be read."""
    try:
        doc = orjson.loads(data)
        job, target, operation = doc["job"], doc["target"], doc["op"]
        indexes = [item[0] for item in doc["items"]]
        if not (isinstance(job, str) and isinstance(target, str) and isinstance(operation, str)
                and all(type(i) is int for i in indexes)):
            return None
        src = doc.get("src")
        return Envelope(job, target, operation, [Item(i, None, code, message) for i in indexes],
                        source_topic=src[0] if src else None, source_partition=src[1] if src else None)
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError):
        return None


class Item(NamedTuple):
    """One record inside an envelope (a named tuple: built per record, twice as fast to make
    as a frozen dataclass)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing here uses
    """Position in the submitted payload (or the source offset for producer records)."""
    row: tuple[Any, ...] | None
    """Converted values in column order; None when the record failed validation."""
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """Records of one job, one target and one operation, all bound for one partition."""

    job_id: str
    target: str
    operation: str
    items: Sequence[Item]
    source_topic: str | None = None
    """Set for records that producers wrote to an input topic."""
    source_partition: int | None = None
    received: Mapping[int, RecordText] = field(default_factory=dict)
    """The record as received of failed items, by index (those that have one)."""

    def with_items(self, items: Sequence[Item]) -> Envelope:
        """The envelope holding only ``items`` (some of its own), with their records."""
        received = self.received
        if received:
            received = {i.index: received[i.index] for i in items if i.index in received}
        return replace(self, items=items, received=received)


def _from_v1(column_type: ColumnType) -> Callable[[Any], Any] | None:
    if column_type in (ColumnType.TIMESTAMP_MILLIS, ColumnType.TIMESTAMP_MICROS):
        return lambda v: None if v is None else _EPOCH + timedelta(microseconds=v)
    if column_type is ColumnType.DATE:
        return lambda v: None if v is None else _EPOCH_DAY + timedelta(days=v)
    return None


def _timestamp_from_text(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _from_wire(column_type: ColumnType) -> Callable[[Any], Any] | None:
    if column_type in (ColumnType.TIMESTAMP_MILLIS, ColumnType.TIMESTAMP_MICROS):
        return _timestamp_from_text
    if column_type is ColumnType.DATE:
        return lambda v: None if v is None else date.fromisoformat(v)
    return None


class EnvelopeCodec:
    """Encodes and decodes envelopes for the targets it knows, column conversions precomputed."""

    def __init__(self, targets: dict[str, Target]) -> None:
        self._from_wire: dict[int, dict[str, list[tuple[int, Callable[[Any], Any]]]]] = {
            ENVELOPE_VERSION: {}, _V1: {}}
        self.add_targets(targets)

    def add_targets(self, targets: dict[str, Target]) -> None:
        """Learn more targets (a rolling deploy may add one while a worker runs)."""
        for version, reader in ((ENVELOPE_VERSION, _from_wire), (_V1, _from_v1)):
            for name, t in targets.items():
                self._from_wire[version][name] = [
                    (i, f) for i, c in enumerate(t.columns) if (f := reader(c.type))]

    def encode(self, envelope: Envelope) -> bytes:
        """Serialise an envelope for the records topic."""
        # Items as plain tuples (orjson writes no named tuples); rows as they are: orjson
        # writes their datetimes and dates itself.
        items = list(map(tuple, envelope.items))
        doc = {
            "v": ENVELOPE_VERSION,
            "job": envelope.job_id,
            "target": envelope.target,
            "op": envelope.operation,
            "src": [envelope.source_topic, envelope.source_partition]
            if envelope.source_topic is not None
            else None,
            "items": items,
        }
        if envelope.received:
            doc["rec"] = [(index, *text) for index, text in envelope.received.items()]
        return orjson.dumps(doc)

    def encode_bounded(self, envelope: Envelope, max_bytes: int) -> list[tuple[Envelope, bytes]]:
        """Encode, halving the envelope until each part fits in one Kafka message.

        Long string fields can push a full batch past the broker's message size limit
        (1 MB by default); a single record over the limit is left whole for the broker
        to refuse. Returns each part with its encoding.
        """
        data = self.encode(envelope)
        if len(data) <= max_bytes or len(envelope.items) < 2:
            return [(envelope, data)]
        half = len(envelope.items) // 2
        return [
            *self.encode_bounded(envelope.with_items(envelope.items[:half]), max_bytes),
            *self.encode_bounded(envelope.with_items(envelope.items[half:]), max_bytes),
        ]

    def decode(self, data: bytes) -> Envelope:
        """Parse an envelope; EnvelopeError if it is not one this version understands."""
        try:
            doc = orjson.loads(data)
            version = doc.get("v")
            if type(version) is not int or version not in self._from_wire:
                raise EnvelopeError(f"unsupported envelope version {version!r}")
            target = doc["target"]
            conversions = self._from_wire[version].get(target)
            if conversions is None:
                failed = salvage(data, UNKNOWN_TARGET, f"no target named {target!r} is known")
                if failed is None:
                    raise EnvelopeError("malformed envelope for an unknown target")
                raise UnknownTargetError(str(target), failed)
            items: list[Item] = []
            append = items.append
            for index, row, code, message in doc["items"]:
                if row is not None:
                    for i, convert in conversions:
                        row[i] = convert(row[i])
                    row = tuple(row)
                append(Item(index, row, code, message))
            src = doc.get("src")
            return Envelope(
                job_id=doc["job"],
                target=target,
                operation=doc["op"],
                items=items,
                source_topic=src[0] if src else None,
                source_partition=src[1] if src else None,
                received={index: RecordText(text, cut is True)
                          for index, text, cut in doc.get("rec") or ()},
            )
        except EnvelopeError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise EnvelopeError(f"malformed envelope: {type(e).__name__}") from e
