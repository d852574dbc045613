"""What the binary framers (Protobuf, Avro) share: base-128 varints, bounded record lists,
and rows made from values their decoder has already typed."""

from __future__ import annotations

from collections.abc import Iterable
from operator import call
from typing import Any, Final

from schemas.preparation import key_only
from schemas.targets import Target
from schemas.validation import RecordConverter, RecordInvalid
from web.payloads.records import ConvertedRecord, MalformedRecord, PayloadError, RawRecord

Framed = RawRecord | ConvertedRecord | MalformedRecord

RECORDS_PER_LIST: Final = 1024
"""Most records a binary framer puts in one list: one body piece of tiny messages must not
become one list of hundreds of thousands of decoded records."""

MAX_VARINT_BYTES: Final = 10
"""A 64-bit value takes at most ten 7-bit groups; a longer varint is corrupt."""


def write_varint(value: int) -> bytes:
    """An unsigned base-128 varint, as Protobuf and Avro write lengths (Avro zig-zags first)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes | bytearray, position: int, what: str) -> tuple[int, int] | None:
    """The unsigned varint at ``position`` and the position after it; None if ``data`` ends
    inside it. Over MAX_VARINT_BYTES the body is rejected (400), naming ``what`` it was."""
    if position < len(data) and data[position] < 0x80:  # the usual one-byte value, no loop
        return data[position], position + 1
    value = 0
    shift = 0
    end = min(len(data), position + MAX_VARINT_BYTES)
    for at in range(position, end):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at + 1
        shift += 7
    if end - position >= MAX_VARINT_BYTES:
        raise PayloadError(400, f"{what}: a varint longer than {MAX_VARINT_BYTES} bytes")
    return None


def zigzag(value: int) -> int:
    """An Avro long from its zigzag-encoded varint."""
    return (value >> 1) ^ -(value & 1)


class RowMaker:
    """Makes rows of records a binary decoder has already typed, in compiled-path fashion.

    The values go through the very converters RecordConverter.from_json applies to each
    column (NUL in text, float32 narrowing, finite reals, timestamps and dates), without a
    dict in between. A record with a value that is not valid as it stands gets None: the
    caller hands it to the exact path (a RawRecord), which says what is wrong with the same
    code and message as always.
    """

    __slots__ = ("names", "_converters")

    def __init__(self, target: Target, *, key_only_columns: bool = False) -> None:
        narrow = key_only(target) if key_only_columns else target
        self.names = narrow.column_names
        """The columns a row holds, in order: the target's, or only its key (a delete)."""
        self._converters = RecordConverter(narrow).json_converters

    def row(self, values: Iterable[Any]) -> tuple[Any, ...] | None:
        """The row of these values (one per column of ``names``), or None."""
        try:
            return tuple(map(call, self._converters, values))
        except RecordInvalid:
            return None
