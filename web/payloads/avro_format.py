"""Avro Object Container File bodies (application/avro): a header, then blocks of records.

The header (magic ``Obj\\x01``, a metadata map with ``avro.schema`` and ``avro.codec``, a
16-byte sync marker) is read as its bytes arrive, and the file's schema checked against the
target's (schemas.resolution) before any block: a file the target cannot read is refused
whole (422) before its first record. Each block (record count, byte size, data, sync
marker) is decoded once all its bytes are there; at most one block is held, and its records
leave in lists as they are decoded. Records are read with fastavro's schemaless_reader,
the file's schema as the writer's and the target's as the reader's, so Avro's own
resolution applies (fields matched by name, defaults, promotions); their values then go
through RecordConverter's per-column converters, as producers' Avro records do: a valid
record becomes a row at once (binary.RowMaker), any other a dict for from_json, which
says why.

What a body may cost: a header within HEADER_BYTES (or the record limit); a block within ``block_limit`` of
data, before and after inflating; all blocks together inflating to at most the body limit.
Corrupt framing (a wrong sync marker, a block that does not decode, a body cut short) is
refused whole (400); a codec other than null and deflate is 415.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final

import fastavro
import orjson

from schemas.resolution import SchemaMismatch, check_resolvable
from schemas.targets import Target
from web.echo import echo
from web.payloads.binary import RECORDS_PER_LIST, Framed, RowMaker, read_varint, zigzag
from web.payloads.records import (
    ConvertedRecord,
    MalformedRecord,
    PayloadError,
    RawRecord,
    RecordCode,
)

MAGIC: Final = b"Obj\x01"
SYNC_BYTES: Final = 16
CODECS: Final = ("null", "deflate")

BLOCK_BYTES: Final = 16 << 20
"""The default bound on one block, compressed or inflated. Avro writers cut a block every
16 KB (fastavro) to 64 KB (Java's DataFileWriter) by default, so 16 MiB is far past any
ordinary file, while it caps what one body holds at once: one block and its records.
A block must hold at least one record, so the bound is never under two records' limit."""

HEADER_BYTES: Final = 1 << 20
"""The most a header may take, unless the record limit is higher: its schema is JSON text,
and one of a target of 1,600 documented columns takes a few hundred kilobytes."""


def block_limit(max_record_bytes: int) -> int:
    """The most one block may take, compressed or inflated (see BLOCK_BYTES)."""
    return max(BLOCK_BYTES, 2 * max_record_bytes)


def _length(value: int) -> int:
    """A byte length read from the header, which a negative one makes corrupt."""
    if value < 0:
        raise PayloadError(400, "the Avro header holds a negative length")
    return value


class _Incomplete(Exception):
    """The header needs at least ``need`` bytes of buffer before it can go on."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


class AvroFramer:
    """Reads an Avro Object Container File a piece at a time into records of ``target``.

    ``feed`` takes the decoded body a piece at a time and yields lists of records; each
    iterator it returns must be exhausted before the next piece. ``finish`` checks the body
    did not stop inside the header or a block.
    """

    def __init__(self, target: Target, *, max_record_bytes: int, max_bytes: int,
                 key_only: bool = False) -> None:
        self._target = target
        self._rows = RowMaker(target, key_only_columns=key_only)
        self._record_limit = max_record_bytes
        self._header_limit = max(HEADER_BYTES, max_record_bytes)
        self._block_limit = block_limit(max_record_bytes)
        self._max_inflated = max_bytes
        self._buffer = bytearray()
        self._need = 0
        """Buffer bytes the next step (header part or block) needs before it is tried."""
        self._position = 0
        """Within the header: how far it is read."""
        self._entries = -1
        """Within the header: metadata entries left in the current map block (-1: at a count)."""
        self._meta: dict[str, bytes] = {}
        self._writer: Any = None
        self._sync = b""
        self._deflate = False
        self._inflated = 0
        self._blocks = 0
        self._index = 0

    def feed(self, data: bytes) -> Iterator[list[Framed]]:
        """The records of the blocks that end in this piece of body, in lists."""
        self._buffer += data
        if len(self._buffer) < self._need:
            return
        if not self._sync and not self._read_header():
            return
        yield from self._read_blocks()

    def finish(self) -> None:
        """Refuse a body that stops inside the header or a block (400)."""
        if self._buffer:
            where = f"block {self._blocks}" if self._sync else "the Avro header"
            raise PayloadError(400, f"the body ends inside {where}: it is truncated")

    # --- header ---------------------------------------------------------------------

    def _read_header(self) -> bool:
        """Read what the buffer holds of the header; True once it is whole and accepted."""
        buffer = self._buffer
        try:
            if self._position == 0:
                self._take(len(MAGIC))
                if buffer[:len(MAGIC)] != MAGIC:
                    raise PayloadError(400, "the body is not an Avro object container file "
                                            "(it does not start with Obj\\x01)")
            while self._entries:
                if self._entries < 0:
                    count, at = self._varint(self._position, "the header's metadata count")
                    if count < 0:  # a negative count is followed by the block's byte size
                        _, at = self._varint(at, "the header's metadata size")
                        count = -count
                    self._position, self._entries = at, count
                    if not count:
                        break
                key_length, at = self._varint(self._position, "a metadata key")
                key_end = self._need_bytes(at + _length(key_length))
                value_length, value_at = self._varint(key_end, "a metadata value")
                value_end = self._need_bytes(value_at + _length(value_length))
                self._meta[bytes(buffer[at:key_end]).decode("utf-8", "replace")] = \
                    bytes(buffer[value_at:value_end])
                self._position = value_end
                self._entries -= 1
                if not self._entries:
                    self._entries = -1
            self._take(SYNC_BYTES)
        except _Incomplete as incomplete:
            self._need = incomplete.need
            return False
        self._sync = bytes(buffer[self._position - SYNC_BYTES:self._position])
        del buffer[:self._position]
        self._need = 0
        self._accept(self._meta)
        return True

    def _need_bytes(self, end: int) -> int:
        """``end``, once the buffer reaches it; the header may not pass its limit."""
        if end > self._header_limit:
            raise PayloadError(413, f"the Avro header is larger than {self._header_limit} bytes")
        if end > len(self._buffer):
            raise _Incomplete(end)
        return end

    def _take(self, size: int) -> None:
        self._position = self._need_bytes(self._position + size)

    def _varint(self, position: int, what: str) -> tuple[int, int]:
        """The Avro long at ``position`` in the header, and where it ends."""
        got = read_varint(self._buffer, position, what)
        if got is None:
            raise _Incomplete(self._need_bytes(len(self._buffer) + 1))
        value, at = got
        return zigzag(value), at

    def _accept(self, meta: dict[str, bytes]) -> None:
        """Check the header's codec and schema; keep the writer's schema."""
        codec = meta.get("avro.codec", b"null").decode("utf-8", "replace") or "null"
        if codec not in CODECS:
            raise PayloadError(415, f"Avro codec {echo(codec)} is not supported: write the file "
                                    f"with codec {' or '.join(CODECS)}")
        self._deflate = codec == "deflate"
        text = meta.get("avro.schema")
        if text is None:
            raise PayloadError(400, "the Avro header has no avro.schema")
        try:
            self._writer = fastavro.parse_schema(orjson.loads(text))
        except orjson.JSONDecodeError:
            raise PayloadError(400, "the Avro header's avro.schema is not JSON") from None
        except Exception:  # noqa: BLE001 - fastavro raises several unrelated types
            raise PayloadError(422, "the Avro header's avro.schema is not a valid Avro schema") \
                from None
        try:
            check_resolvable(self._writer, self._target)
        except SchemaMismatch as exc:
            raise PayloadError(
                422, f"the file's records cannot be read as {self._target.name}: {exc}") from None

    # --- blocks ---------------------------------------------------------------------

    def _read_blocks(self) -> Iterator[list[Framed]]:
        """The blocks the buffer holds whole; what they took is dropped from it once at the
        end, not after each block (a piece of body holds many small blocks)."""
        buffer = self._buffer
        at = 0
        try:
            while len(buffer) - at >= max(self._need, 1):
                what = f"block {self._blocks}"
                counted = read_varint(buffer, at, f"{what}: its record count")
                sized = counted and read_varint(buffer, counted[1], f"{what}: its size")
                if not counted or not sized:
                    self._need = len(buffer) - at + 1
                    return
                count, size, start = zigzag(counted[0]), zigzag(sized[0]), sized[1]
                if count < 0 or size < 0:
                    raise PayloadError(400, f"{what}: a negative record count or size")
                if size > self._block_limit:
                    raise PayloadError(413, f"{what}: {size} bytes, over the {self._block_limit}-"
                                            "byte limit on one block; write smaller blocks")
                end = start + size
                self._need = end + SYNC_BYTES - at
                if len(buffer) - at < self._need:
                    return
                data = bytes(buffer[start:end])
                if buffer[end:end + SYNC_BYTES] != self._sync:
                    raise PayloadError(400, f"{what}: its sync marker is not the header's "
                                            "(the file is corrupt, or was cut and joined)")
                at = end + SYNC_BYTES
                self._need = 0
                self._blocks += 1
                yield from self._records(what, count, self._inflate(what, data))
        finally:
            del buffer[:at]

    def _inflate(self, what: str, data: bytes) -> bytes:
        if not self._deflate:
            return data
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(data, self._block_limit + 1)
        except zlib.error:
            raise PayloadError(400, f"{what}: its deflate data is corrupt") from None
        if len(raw) > self._block_limit:
            raise PayloadError(413, f"{what}: inflates past the {self._block_limit}-byte limit "
                                    "on one block")
        if not inflater.eof:
            raise PayloadError(400, f"{what}: its deflate data is cut short")
        self._inflated += len(raw)
        if self._inflated > self._max_inflated:
            raise PayloadError(413, f"the Avro blocks inflate past {self._max_inflated} bytes")
        return raw

    def _records(self, what: str, count: int, raw: bytes) -> Iterator[list[Framed]]:
        # Every record of a target takes at least a byte: a count past that is a lie
        # that would otherwise make records out of nothing.
        if count > len(raw):
            raise PayloadError(400, f"{what}: {count} records cannot fit in {len(raw)} bytes")
        stream = io.BytesIO(raw)
        tell = stream.tell
        read: Callable[..., Any] = fastavro.schemaless_reader  # a record schema reads a dict
        writer, reader = self._writer, self._target.avro_schema
        rows, names, limit = self._rows, self._rows.names, self._record_limit
        batch: list[Framed] = []
        start = 0
        for n in range(count):
            try:
                value = read(stream, writer, reader)
            except Exception:  # noqa: BLE001 - any decoder failure: the block is corrupt
                raise PayloadError(
                    400, f"{what}: record {n} does not decode under the file's schema") from None
            end = tell()
            index = self._index
            self._index += 1
            if end - start > limit:
                batch.append(MalformedRecord(
                    index, RecordCode.TOO_LARGE,
                    f"record {index}: {end - start} bytes, over the {limit}-byte limit"))
            elif (row := rows.row(map(value.__getitem__, names))) is not None:
                batch.append(ConvertedRecord(index, row))
            else:
                batch.append(RawRecord(index, {name: value[name] for name in names}, False))
            start = end
            if len(batch) >= RECORDS_PER_LIST:
                yield batch
                batch = []
        if start != len(raw):
            raise PayloadError(400, f"{what}: {len(raw) - start} bytes follow its {count} records")
        if batch:
            yield batch
