"""PayloadReader: a request body in (size-limited, decompressed), records out by its media type."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Final, cast

import ijson
import orjson

from app.errors import SluiceError
from schemas.received import record_text
from schemas.targets import Target
from web.payloads.avro_format import AvroFramer
from web.payloads.csv_format import CsvFramer
from web.payloads.encodings import decoder_for
from web.payloads.json_format import JsonFramer
from web.payloads.limits import (
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_MAX_RECORD_FIELDS,
    JSON_SLICE_BYTES,
    exceeds_fields,
    fields_need_counting_past,
)
from web.payloads.lines import TOO_LONG, LineSplitter
from web.payloads.media import BINARY_MEDIA_TYPES, MediaType
from web.payloads.protobuf_format import ProtobufFramer
from web.payloads.records import (
    ConvertedRecord,
    LineDecoder,
    MalformedRecord,
    PayloadError,
    RawRecord,
    RecordCode,
)

# Each decompression step yields at most about this much, so a bomb is caught by the
# size limit after at most one step rather than after inflating a whole chunk.
_INFLATE_STEP: Final = 64 * 1024


class PayloadReader:
    """Decodes one request body into a stream of records, holding at most a chunk at a time.

    ``records()`` raises PayloadError when the payload as a whole must be
    rejected (possibly after yielding some records: callers must not commit
    anything before the iteration ends). ``target`` and ``operation`` are set
    from a JSON envelope as soon as they are read; they must precede
    ``"records"`` in the envelope, so they are known before the first record.
    A zero-byte body yields no records for JSON, NDJSON, Protobuf and Avro; CSV needs a
    header. Protobuf and Avro bodies are decoded by ``target_schema`` (they do not name
    their target); ``key_only`` keeps only its key columns, for a delete.

    One record may take at most ``max_record_bytes`` and hold at most
    ``max_record_fields`` values (see ``web.payloads.limits``): these, not the body
    size, bound what reading a body holds in memory.
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        media_type: MediaType,
        *,
        content_encoding: str | None = None,
        max_bytes: int,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_record_fields: int = DEFAULT_MAX_RECORD_FIELDS,
        target_schema: Target | None = None,
        key_only: bool = False,
    ) -> None:
        self._decoder = decoder_for(content_encoding)
        if max_bytes < 1 or max_record_bytes < 1 or max_record_fields < 1:
            raise SluiceError("max_bytes, max_record_bytes and max_record_fields must be positive")
        if media_type in BINARY_MEDIA_TYPES and target_schema is None:
            raise SluiceError(f"a {media_type} body is decoded by its target_schema: give it")
        self._target_schema = target_schema
        """The target a Protobuf or Avro body is decoded by; ``key_only`` for a delete's."""
        self._key_only = key_only
        self._chunks = chunks
        self._media_type = media_type
        self._max_bytes = max_bytes
        self._max_record_bytes = max_record_bytes
        self._max_record_fields = max_record_fields
        self._started = False
        self.target: str | None = None
        self.operation: str | None = None
        self.bytes_read = 0
        self.line_decoder: LineDecoder | None = None
        """Set (by ``on_settled``, say) to decode NDJSON lines in compiled code: a line it
        turns into a row comes out as a ConvertedRecord; any other line takes the exact path."""

    def records(
        self, on_settled: Callable[[], None] | None = None
    ) -> AsyncIterator[RawRecord | ConvertedRecord | MalformedRecord]:
        """The records in payload order; one pass only, as the body is consumed.

        ``on_settled`` is called once ``target`` and ``operation`` are final and before
        any record is read: at the start for NDJSON and CSV, when the records array opens
        for JSON. So a caller can refuse the request before the records cost anything.
        It is not called for a body that has no records array (or no bytes) at all.
        """
        return _one_by_one(self.batches(on_settled))

    def batches(
        self, on_settled: Callable[[], None] | None = None
    ) -> AsyncIterator[list[RawRecord | ConvertedRecord | MalformedRecord]]:
        """``records``, a list at a time (what one piece of body held): a record costs no
        step of an asynchronous generator of its own."""
        if self._started:
            raise SluiceError("PayloadReader.records() can only be iterated once")
        self._started = True
        if self._media_type == MediaType.NDJSON:
            return self._ndjson(on_settled)
        if self._media_type == MediaType.JSON:
            return _in_lists(self._json(on_settled))
        if self._media_type in BINARY_MEDIA_TYPES:
            return self._binary(on_settled)
        return _in_lists(self._csv(on_settled))

    # --- body -----------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self.bytes_read += size
        if self.bytes_read > self._max_bytes:
            raise PayloadError(413, f"the body exceeds {self._max_bytes} bytes")

    async def _body(self) -> AsyncGenerator[bytes, None]:
        """The decoded body, in pieces of bounded size when it was compressed."""
        decoder = self._decoder
        if decoder is None:
            async for chunk in self._chunks:
                if chunk:
                    self._count(len(chunk))
                    yield chunk
            return
        started = False
        async for chunk in self._chunks:
            if not chunk:
                continue
            started = True
            data = chunk
            while True:
                # +1: decoding one byte past the limit is how we notice it.
                allowance = min(_INFLATE_STEP, self._max_bytes - self.bytes_read + 1)
                piece = decoder.step(data, allowance)
                data = b""
                if piece:
                    self._count(len(piece))
                    yield piece
                if decoder.wants_input:
                    break
        if started and not decoder.finished:
            raise PayloadError(400, f"the {decoder.name} body is truncated")

    async def _lines(self, splitter: LineSplitter) -> AsyncIterator[list[bytes]]:
        # aclosing: a consumer stopping early (PayloadError) closes the body now,
        # not whenever the garbage collector gets to it.
        async with aclosing(self._body()) as body:
            async for piece in body:
                lines = splitter.feed(piece)
                if lines:
                    yield lines
        yield splitter.finish()

    # --- formats --------------------------------------------------------------------

    async def _ndjson(
        self, on_settled: Callable[[], None] | None
    ) -> AsyncIterator[list[RawRecord | ConvertedRecord | MalformedRecord]]:
        if on_settled is not None:
            on_settled()
        typed = self.line_decoder
        limit = self._max_record_bytes
        max_fields = self._max_record_fields
        count_past = fields_need_counting_past(max_fields)
        splitter = LineSplitter(limit)
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        index = 0
        line_no = 0
        async for lines in self._lines(splitter):
            batch: list[RawRecord | ConvertedRecord | MalformedRecord] = []
            add = batch.append
            for line in lines:
                line_no += 1
                if not line:
                    continue
                # A line this short cannot hold more values than the field limit allows.
                if typed is not None and len(line) <= count_past:
                    row = typed(line)
                    if row is not None:
                        add(ConvertedRecord(index, row))
                        index += 1
                        continue
                try:
                    value = loads(line)  # a trailing "\r" is JSON whitespace: no strip needed
                except decode_error:
                    if line is TOO_LONG:
                        splitter.dropped_quotes.popleft()  # CSV's concern only
                        add(MalformedRecord(
                            index, RecordCode.TOO_LARGE, f"line {line_no}: exceeds {limit} bytes",
                            record_text(splitter.dropped_heads.popleft()),
                        ))
                    elif line.isspace():
                        continue
                    else:
                        add(MalformedRecord(
                            index, RecordCode.MALFORMED, f"line {line_no}: not valid JSON",
                            record_text(line),
                        ))
                    index += 1
                    continue
                if len(line) > count_past and exceeds_fields(value, max_fields):
                    add(MalformedRecord(
                        index, RecordCode.TOO_LARGE,
                        f"line {line_no}: more than {max_fields} fields", record_text(line),
                    ))
                else:
                    add(RawRecord(index, value, False, line))
                index += 1
            if batch:
                yield batch

    async def _csv(
        self, on_settled: Callable[[], None] | None
    ) -> AsyncIterator[RawRecord | MalformedRecord]:
        if on_settled is not None:
            on_settled()
        splitter = LineSplitter(self._max_record_bytes)
        framer = CsvFramer(self._max_record_bytes, splitter.dropped_quotes, splitter.dropped_heads,
                           max_columns=self._max_record_fields)
        take = framer.line
        async for lines in self._lines(splitter):
            for line in lines:
                record = take(line)
                if record is not None:
                    yield record
        record = framer.finish()
        if record is not None:
            yield record

    async def _json(
        self, on_settled: Callable[[], None] | None
    ) -> AsyncIterator[RawRecord | MalformedRecord]:
        events = cast(list[tuple[str, Any]], ijson.sendable_list())
        # use_float: numbers as float, not Decimal, like orjson on the NDJSON path.
        parser = ijson.basic_parse_coro(events, use_float=True)
        framer = JsonFramer(self, max_bytes=self._max_record_bytes,
                            max_fields=self._max_record_fields, on_settled=on_settled)
        position = 0
        async with aclosing(self._body()) as body:
            async for piece in body:
                # Bounded slices: the framer checks element sizes between them.
                for start in range(0, len(piece), JSON_SLICE_BYTES):
                    part = piece[start:start + JSON_SLICE_BYTES] if len(piece) > JSON_SLICE_BYTES else piece
                    position += len(part)
                    try:
                        parser.send(part)
                    except ijson.JSONError:
                        # What parsed before the error counts first (a forbidden target is
                        # 403 however the body was cut), then the error: its message quotes
                        # the body around it, so it is not passed on.
                        framer.feed(events, position)
                        raise PayloadError(400, "the body is not valid JSON") from None
                    records = framer.feed(events, position)
                    del events[:]
                    for record in records:
                        yield record
        if not position:
            return
        try:
            parser.close()
        except ijson.JSONError:
            framer.feed(events, position)
            raise PayloadError(400, "the body is not valid JSON (is it truncated?)") from None
        for record in framer.feed(events, position):
            yield record
        framer.finish()

    async def _binary(
        self, on_settled: Callable[[], None] | None
    ) -> AsyncIterator[list[RawRecord | ConvertedRecord | MalformedRecord]]:
        """Protobuf or Avro: the framer holds one message or block; it yields bounded lists."""
        target = self._target_schema
        assert target is not None  # checked when the reader was made
        framer: ProtobufFramer | AvroFramer
        if self._media_type == MediaType.PROTOBUF:
            framer = ProtobufFramer(target, max_record_bytes=self._max_record_bytes,
                                    key_only=self._key_only)
        else:
            framer = AvroFramer(target, max_record_bytes=self._max_record_bytes,
                                max_bytes=self._max_bytes, key_only=self._key_only)
        if on_settled is not None:
            on_settled()
        async with aclosing(self._body()) as body:
            async for piece in body:
                for batch in framer.feed(piece):
                    yield batch
        framer.finish()


Record = RawRecord | ConvertedRecord | MalformedRecord


async def _one_by_one(batches: AsyncIterator[list[Record]]) -> AsyncIterator[Record]:
    async for batch in batches:
        for record in batch:
            yield record


_LIST_AT_MOST = 1024
"""Records per list when a format frames them one by one (JSON arrays, CSV)."""


async def _in_lists(records: AsyncIterator[Record]) -> AsyncIterator[list[Record]]:
    batch: list[Record] = []
    async for record in records:
        batch.append(record)
        if len(batch) >= _LIST_AT_MOST:
            yield batch
            batch = []
    if batch:
        yield batch
