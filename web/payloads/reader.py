"""PayloadReader: a request body in (size-limited, gunzipped), records out by its media type."""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import aclosing
from typing import Any, Final, cast

import ijson
import orjson

from app.errors import SluiceError
from web.payloads.csv_format import CsvFramer
from web.payloads.json_format import JsonFramer
from web.payloads.lines import TOO_LONG, LineSplitter
from web.payloads.media import MediaType
from web.payloads.records import MalformedRecord, PayloadError, RawRecord

DEFAULT_MAX_RECORD_BYTES: Final = 1 << 20
"""Longest NDJSON line or CSV record accepted; longer ones become record_too_large."""

# Each inflate step yields at most this much, so a gzip bomb is caught by the
# size limit after at most one step rather than after inflating a whole chunk.
_INFLATE_STEP: Final = 64 * 1024
_GZIP_WBITS: Final = 31  # 16 + 15: gzip header and trailer, 32 KiB window


class PayloadReader:
    """Decodes one request body into a stream of records, holding at most a chunk at a time.

    ``records()`` raises PayloadError when the payload as a whole must be
    rejected (possibly after yielding some records: callers must not commit
    anything before the iteration ends). ``target`` and ``operation`` are set
    from a JSON envelope as soon as they are read; they must precede
    ``"records"`` in the envelope, so they are known before the first record.
    A zero-byte body yields no records for JSON and NDJSON; CSV needs a header.
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        media_type: MediaType,
        *,
        content_encoding: str | None = None,
        max_bytes: int,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip"):
            raise PayloadError(
                415, f"Content-Encoding {encoding[:64]!r} is not supported; use gzip or identity"
            )
        if max_bytes < 1 or max_record_bytes < 1:
            raise SluiceError("max_bytes and max_record_bytes must be positive")
        self._chunks = chunks
        self._media_type = media_type
        self._gzip = encoding != "identity"
        self._max_bytes = max_bytes
        self._max_record_bytes = max_record_bytes
        self._started = False
        self.target: str | None = None
        self.operation: str | None = None
        self.bytes_read = 0

    def records(self) -> AsyncIterator[RawRecord | MalformedRecord]:
        """The records in payload order; one pass only, as the body is consumed."""
        if self._started:
            raise SluiceError("PayloadReader.records() can only be iterated once")
        self._started = True
        if self._media_type == MediaType.NDJSON:
            return self._ndjson()
        if self._media_type == MediaType.JSON:
            return self._json()
        return self._csv()

    # --- body -----------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self.bytes_read += size
        if self.bytes_read > self._max_bytes:
            raise PayloadError(413, f"the body exceeds {self._max_bytes} bytes")

    async def _body(self) -> AsyncGenerator[bytes, None]:
        """The decompressed body, in pieces of bounded size when it was gzipped."""
        if not self._gzip:
            async for chunk in self._chunks:
                if chunk:
                    self._count(len(chunk))
                    yield chunk
            return
        inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        started = False
        async for chunk in self._chunks:
            if not chunk:
                continue
            started = True
            data = chunk
            while True:
                if inflater.eof:  # RFC 1952 allows several gzip members back to back
                    inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
                # +1: inflating one byte past the limit is how we notice it.
                allowance = min(_INFLATE_STEP, self._max_bytes - self.bytes_read + 1)
                try:
                    piece = inflater.decompress(data, allowance)
                except zlib.error:
                    raise PayloadError(400, "the body is not valid gzip") from None
                if piece:
                    self._count(len(piece))
                    yield piece
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                # A full allowance may leave output pending inside zlib: go round again.
                if not data and (inflater.eof or len(piece) < allowance):
                    break
        if started and not inflater.eof:
            raise PayloadError(400, "the gzip body is truncated")

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

    async def _ndjson(self) -> AsyncIterator[RawRecord | MalformedRecord]:
        limit = self._max_record_bytes
        splitter = LineSplitter(limit)
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        index = 0
        line_no = 0
        async for lines in self._lines(splitter):
            for line in lines:
                line_no += 1
                if not line:
                    continue
                try:
                    value = loads(line)  # a trailing "\r" is JSON whitespace: no strip needed
                except decode_error:
                    if line is TOO_LONG:
                        yield MalformedRecord(
                            index, "record_too_large", f"line {line_no}: exceeds {limit} bytes"
                        )
                    elif line.isspace():
                        continue
                    else:
                        yield MalformedRecord(
                            index, "malformed_record", f"line {line_no}: not valid JSON"
                        )
                    index += 1
                    continue
                yield RawRecord(index, value, False)
                index += 1

    async def _csv(self) -> AsyncIterator[RawRecord | MalformedRecord]:
        splitter = LineSplitter(self._max_record_bytes)
        framer = CsvFramer(self._max_record_bytes, splitter.dropped_quotes)
        take = framer.line
        async for lines in self._lines(splitter):
            for line in lines:
                record = take(line)
                if record is not None:
                    yield record
        record = framer.finish()
        if record is not None:
            yield record

    async def _json(self) -> AsyncIterator[RawRecord | MalformedRecord]:
        events = cast(list[tuple[str, Any]], ijson.sendable_list())
        # use_float: numbers as float, not Decimal, like orjson on the NDJSON path.
        parser = ijson.basic_parse_coro(events, use_float=True)
        framer = JsonFramer(self)
        empty = True
        async with aclosing(self._body()) as body:
            async for piece in body:
                empty = False
                try:
                    parser.send(piece)
                except ijson.JSONError:
                    # ijson's message quotes the body around the error: keep it out.
                    raise PayloadError(400, "the body is not valid JSON") from None
                if events:
                    records = framer.feed(events)
                    del events[:]
                    for record in records:
                        yield record
        if empty:
            return
        try:
            parser.close()
        except ijson.JSONError:
            raise PayloadError(400, "the body is not valid JSON (is it truncated?)") from None
        for record in framer.feed(events):
            yield record
        framer.finish()
