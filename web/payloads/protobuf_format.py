"""Protobuf body framing: length-delimited messages of the target's message class in, records out.

Each message is preceded by its length as a base-128 varint, as protobuf's
writeDelimitedTo and parseDelimitedFrom (Java), protodelim (Go) and the C++
SerializeDelimitedToOstream write and read them. Only one message is ever held: a message
over the record limit is skipped as its bytes arrive and fails alone (record_too_large).
A body that ends inside a length or a message, or a length over 10 bytes, is corrupt: it
is rejected whole (400), as a truncated JSON body is.

A parsed message's values go through the per-column converters of RecordConverter, the
conversion JSON and producer records go through: a Timestamp as epoch milli- or
microseconds (the column's unit), an unset ``optional`` field as null. A valid message
becomes a row at once (binary.RowMaker); one that is not becomes a dict of its columns for
RecordConverter.from_json, which says why (an unset Timestamp of a required column is a
missing field).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any, Final

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from schemas.protobuf import ProtoField, message_class, proto_fields
from schemas.targets import ColumnType, Target
from web.payloads.binary import RECORDS_PER_LIST, Framed, RowMaker, read_varint
from web.payloads.records import (
    ConvertedRecord,
    MalformedRecord,
    PayloadError,
    RawRecord,
    RecordCode,
)

UNKNOWN_FIELD: Final = "unknown_field"
"""The code RecordConverter gives a JSON member no column has; the same for a field number."""
_UNSET: Final = object()
"""A required Timestamp left unset: its column is left out, so it fails as missing."""
_MAX_NUMBERS_REPORTED: Final = 5

Getter = Callable[[Message], Any]


def _timestamp_getter(field: ProtoField) -> Getter:
    name = field.name
    scale, divisor = ((1000, 1_000_000) if field.column_type is ColumnType.TIMESTAMP_MILLIS
                      else (1_000_000, 1000))
    absent = None if field.optional else _UNSET

    def get(message: Message) -> Any:
        if not message.HasField(name):
            return absent
        stamp = getattr(message, name)
        return stamp.seconds * scale + stamp.nanos // divisor

    return get


def _optional_getter(name: str) -> Getter:
    def get(message: Message) -> Any:
        return getattr(message, name) if message.HasField(name) else None

    return get


def _getter(field: ProtoField) -> Getter:
    if field.is_timestamp:
        return _timestamp_getter(field)
    if field.optional:
        return _optional_getter(field.name)
    return attrgetter(field.name)


def _message_getters(target: Target, *, key_only: bool = False) -> list[tuple[str, Getter]]:
    """(column, getter) for each column a record holds, in column order: only the key columns
    when ``key_only`` (a delete's records carry only the key)."""
    return [(field.name, _getter(field)) for field in proto_fields(target)
            if not key_only or field.name in target.key]


def _message_values(getters: list[tuple[str, Getter]], message: Message) -> dict[str, Any]:
    """One parsed message as its record (column -> value), for the exact path."""
    record = {}
    for name, get in getters:
        value = get(message)
        if value is not _UNSET:
            record[name] = value
    return record


class ProtobufFramer:
    """Cuts a body of length-delimited messages into records, holding at most one message.

    ``feed`` takes the decoded body a piece at a time and yields lists of records; each
    iterator it returns must be exhausted before the next piece. ``finish`` checks the body
    did not stop inside a message.
    """

    def __init__(self, target: Target, *, max_record_bytes: int, key_only: bool = False) -> None:
        cls = message_class(target)
        self._parse = cls.FromString
        self._type_name = cls.DESCRIPTOR.full_name
        self._getters = _message_getters(target, key_only=key_only)
        self._get = tuple(get for _, get in self._getters)
        self._rows = RowMaker(target, key_only_columns=key_only)
        self._limit = max_record_bytes
        self._index = 0
        self._head = b""
        """The start of a length cut by the end of a piece."""
        self._pending: int | None = None
        """The length of the message being gathered across pieces."""
        self._parts: list[bytes] = []
        self._have = 0
        self._skip = 0
        """Bytes still to drop of a message over the limit."""

    def feed(self, data: bytes) -> Iterator[list[Framed]]:
        """The records that end in this piece of body, in lists."""
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data, self._skip = data[self._skip:], 0
        batch: list[Framed] = []
        position = 0
        if self._pending is not None:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._pending:
                return
            data = b"".join(self._parts)
            position, self._pending, self._parts, self._have = self._pending, None, [], 0
            batch.append(self._record(data[:position]))
        elif self._head:
            data, self._head = self._head + data, b""
        size = len(data)
        limit = self._limit
        while position < size:
            length = data[position]
            if length < 0x80:  # most records are under 128 bytes: no varint loop
                start = position + 1
            else:
                got = read_varint(data, position, f"record {self._index}: its length")
                if got is None:
                    self._head = data[position:]
                    break
                length, start = got
            end = start + length
            if length > limit:
                batch.append(MalformedRecord(
                    self._index, RecordCode.TOO_LARGE,
                    f"record {self._index}: {length} bytes, over the {limit}-byte limit"))
                self._index += 1
                if end > size:
                    self._skip = end - size
                    break
            elif end > size:
                self._pending = length
                self._parts = [data[start:]]
                self._have = size - start
                break
            else:
                batch.append(self._record(data[start:end]))
                if len(batch) >= RECORDS_PER_LIST:
                    yield batch
                    batch = []
            position = end
        if batch:
            yield batch

    def finish(self) -> None:
        """Refuse a body that ends inside a message or its length (400)."""
        if self._head or self._pending is not None or self._skip:
            raise PayloadError(
                400, f"the body ends inside record {self._index}: it is truncated")

    def _record(self, data: bytes) -> Framed:
        index = self._index
        self._index += 1
        try:
            message = self._parse(data)
        except DecodeError as exc:
            # The parser's reason names the type and what is wrong, never the bytes.
            reason = str(exc).rpartition(": ")[2] or "cannot be parsed"
            return MalformedRecord(index, RecordCode.MALFORMED,
                                   f"record {index}: not a {self._type_name} message: {reason}")
        unknown = UnknownFieldSet(message)
        if len(unknown):
            numbers = sorted({field.field_number for field in unknown})
            shown = ", ".join(map(str, numbers[:_MAX_NUMBERS_REPORTED]))
            more = f" and {len(numbers) - _MAX_NUMBERS_REPORTED} more" \
                if len(numbers) > _MAX_NUMBERS_REPORTED else ""
            return MalformedRecord(
                index, UNKNOWN_FIELD,
                f"record {index}: field number(s) {shown}{more} unknown to {self._type_name}")
        row = self._rows.row([get(message) for get in self._get])
        if row is not None:
            return ConvertedRecord(index, row)
        return RawRecord(index, _message_values(self._getters, message), False)
