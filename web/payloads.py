"""Streaming request-body decoding: JSON, NDJSON or CSV in, records out, memory flat."""

from __future__ import annotations

import csv
import enum
import zlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final, cast

import ijson
import orjson

from app.errors import SluiceError

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "MAX_JSON_DEPTH",
    "MalformedRecord",
    "MediaType",
    "PayloadError",
    "PayloadReader",
    "RawRecord",
    "media_type_for",
]

DEFAULT_MAX_RECORD_BYTES: Final = 1 << 20
"""Longest NDJSON line or CSV record accepted; longer ones become record_too_large."""

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting kept inside one JSON array element. No column takes a nested
value anyway; the cap keeps a hostile record from building a deep object."""

# Each inflate step yields at most this much, so a gzip bomb is caught by the
# size limit after at most one step rather than after inflating a whole chunk.
_INFLATE_STEP: Final = 64 * 1024
_GZIP_WBITS: Final = 31  # 16 + 15: gzip header and trailer, 32 KiB window

_TITLES: Final = {
    400: "Malformed payload",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable payload",
}


class PayloadError(SluiceError):
    """The payload as a whole is rejected (bad framing, size, media type): no record is kept."""

    def __init__(self, status: int, detail: str, *, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title or _TITLES.get(status, "Bad payload")
        self.detail = detail


class MediaType(enum.StrEnum):
    """The body formats the ingress decodes."""

    JSON = "application/json"
    NDJSON = "application/x-ndjson"
    CSV = "text/csv"


_MEDIA_TYPES: Final = {
    "application/json": MediaType.JSON,
    "application/x-ndjson": MediaType.NDJSON,
    "application/ndjson": MediaType.NDJSON,
    "application/jsonl": MediaType.NDJSON,
    "text/csv": MediaType.CSV,
}


def media_type_for(content_type: str | None) -> MediaType:
    """Map a Content-Type header to a MediaType; parameters such as charset are ignored."""
    if content_type is None or not content_type.strip():
        raise PayloadError(415, "a Content-Type header is required")
    essence = content_type.partition(";")[0].strip().lower()
    media_type = _MEDIA_TYPES.get(essence)
    if media_type is None:
        accepted = ", ".join(_MEDIA_TYPES)
        raise PayloadError(415, f"Content-Type {essence!r} is not one of {accepted}")
    return media_type


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One framed record, not yet validated against a target.

    ``textual`` records are CSV rows (column name -> text) for
    RecordConverter.from_text; the others are decoded JSON for from_json.
    """

    index: int
    value: Any
    textual: bool


@dataclass(frozen=True, slots=True)
class MalformedRecord:
    """A record that could not be framed; the rest of the payload still proceeds."""

    index: int
    code: str
    message: str


# Stands in for a line longer than the record limit, which was skipped rather
# than buffered. A distinct object built at run time, so `is` never matches
# input bytes; it is not valid JSON, so it only surfaces on the error path.
_TOO_LONG: Final = b"".join([b"\x00", b"line-too-long"])


class _LineSplitter:
    """Cuts a byte stream into lines (without the newline) of bounded length.

    Lines over the limit come out as ``_TOO_LONG`` and are never held whole;
    the number of double quotes each contained goes to ``dropped_quotes`` so
    the CSV framer can keep track of quoting across them.
    """

    __slots__ = ("_limit", "_parts", "_pending", "_skipping", "_quotes", "dropped_quotes")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._pending = 0
        self._skipping = False
        self._quotes = 0
        self.dropped_quotes: deque[int] = deque()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines ending in this chunk; the unfinished tail is kept."""
        dropped_first = False
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._quotes += chunk.count(b'"')
                return []
            lines = chunk.split(b"\n")
            self.dropped_quotes.append(self._quotes + lines[0].count(b'"'))
            self._skipping = False
            self._quotes = 0
            lines[0] = b""  # placeholder until the length check below is done
            dropped_first = True
        elif self._parts:
            if chunk.find(b"\n") < 0:
                self._hold(chunk)
                return []
            lines = chunk.split(b"\n")
            self._parts.append(lines[0])
            lines[0] = b"".join(self._parts)
            self._parts = []
            self._pending = 0
        else:
            lines = chunk.split(b"\n")
        tail = lines.pop()
        # One C-level pass finds whether any line is too long; the loop that
        # replaces them runs only in that rare case.
        if lines and max(map(len, lines)) > self._limit:
            self._drop_long(lines)
        if dropped_first:
            lines[0] = _TOO_LONG
        if tail:
            self._hold(tail)
        return lines

    def finish(self) -> list[bytes]:
        """The last line, when the body does not end with a newline."""
        if self._skipping:
            self._skipping = False
            self.dropped_quotes.append(self._quotes)
            return [_TOO_LONG]
        if self._parts:
            line = b"".join(self._parts)
            self._parts = []
            return [line]
        return []

    def _hold(self, data: bytes) -> None:
        self._parts.append(data)
        self._pending += len(data)
        if self._pending > self._limit:
            self._skipping = True
            self._quotes = sum(part.count(b'"') for part in self._parts)
            self._parts = []
            self._pending = 0

    def _drop_long(self, lines: list[bytes]) -> None:
        limit = self._limit
        for position, line in enumerate(lines):
            if len(line) > limit:
                self.dropped_quotes.append(line.count(b'"'))
                lines[position] = _TOO_LONG


class _LineFeed:
    """The line iterator under csv.reader: lines are pushed in, the reader pulls them."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: deque[str] = deque()

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        try:
            return self.lines.popleft()
        except IndexError:
            raise StopIteration from None


class _CsvFramer:
    """Groups lines into CSV records, tracking quote parity so quoted newlines work.

    A record ends at a newline after an even number of double quotes (RFC 4180
    doubles quotes inside quoted fields). csv.reader then parses exactly that
    group; if it disagrees about where the record ends, the group is malformed.
    """

    def __init__(self, limit: int, dropped_quotes: deque[int]) -> None:
        self._limit = limit
        self._dropped_quotes = dropped_quotes
        self._feed = _LineFeed()
        self._reader = csv.reader(self._feed, strict=True)
        self._header: tuple[str, ...] | None = None
        self._index = 0
        self._line_no = 0
        self._group: list[str] = []
        self._group_bytes = 0
        self._group_start = 0
        self._open = False
        self._odd = False
        self._too_large = False

    def line(self, line: bytes) -> RawRecord | MalformedRecord | None:
        """Take one physical line; return a record when it completes one."""
        self._line_no += 1
        if not self._open:
            self._open = True
            self._group_start = self._line_no
            self._group_bytes = 0
            self._odd = False
            self._too_large = False
        if line is _TOO_LONG:
            quotes = self._dropped_quotes.popleft()
            self._too_large = True
            self._group.clear()
        else:
            quotes = line.count(b'"')
            try:
                text = line.decode()
            except UnicodeDecodeError:
                raise PayloadError(400, f"line {self._line_no}: not valid UTF-8") from None
            if self._line_no == 1 and text.startswith("\ufeff"):
                text = text[1:]  # byte order mark, as spreadsheet exports write
            if not self._too_large:
                self._group_bytes += len(line) + 1
                if self._group_bytes > self._limit:
                    self._too_large = True
                    self._group.clear()
                else:
                    self._group.append(text + "\n")
        if quotes & 1:
            self._odd = not self._odd
        if self._odd:
            return None
        return self._close_group()

    def finish(self) -> RawRecord | MalformedRecord | None:
        """Flush a record left open by an unterminated quote (it will be malformed)."""
        record = self._close_group() if self._open else None
        if self._header is None:
            raise PayloadError(422, "CSV header row is missing")
        return record

    def _close_group(self) -> RawRecord | MalformedRecord | None:
        self._open = False
        start = self._group_start
        if self._too_large:
            if self._header is None:
                raise PayloadError(422, f"CSV header row exceeds {self._limit} bytes")
            return self._malformed(
                "record_too_large", f"line {start}: record exceeds {self._limit} bytes"
            )
        lines = self._feed.lines
        lines.extend(self._group)
        self._group.clear()
        problem: str | None = None
        row: list[str] | None = None
        try:
            row = next(self._reader, None)
        except csv.Error as exc:
            problem = _csv_problem(exc)
        if lines:
            lines.clear()
            problem = problem or "quotes do not delimit whole fields"
        if problem is not None:
            if self._header is None:
                raise PayloadError(400, f"CSV header row is malformed: {problem}")
            return self._malformed("malformed_record", f"line {start}: {problem}")
        if not row:
            return None  # an empty line: not a record, not counted
        header = self._header
        if header is None:
            self._set_header(row)
            return None
        if len(row) != len(header):
            return self._malformed(
                "malformed_record",
                f"line {start}: expected {len(header)} fields, got {len(row)}",
            )
        record = RawRecord(self._index, dict(zip(header, row, strict=True)), True)
        self._index += 1
        return record

    def _set_header(self, row: list[str]) -> None:
        # Column names never contain spaces, so padding around them is noise.
        names = tuple(name.strip() for name in row)
        if not all(names):
            raise PayloadError(422, "CSV header row has an empty column name")
        if len(set(names)) != len(names):
            raise PayloadError(422, "CSV header row names a column twice")
        self._header = names

    def _malformed(self, code: str, message: str) -> MalformedRecord:
        record = MalformedRecord(self._index, code, message)
        self._index += 1
        return record


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if message.startswith("new-line character seen"):
        # The stock text suggests reopening a file, which means nothing to a client.
        return "line break inside an unquoted field"
    return message


# JSON body states, outside the records array.
_START, _ARRAY, _ENVELOPE, _MEMBER, _DONE = range(5)
_ENVELOPE_KEYS: Final = frozenset({"target", "operation", "records"})


class _JsonFramer:
    """Turns ijson events into records: a top-level array, or the envelope's "records".

    Iterative on purpose (an explicit stack, no recursion) so no nesting depth
    can exhaust the interpreter stack.
    """

    def __init__(self, reader: PayloadReader) -> None:
        self._reader = reader
        self._stack: list[Any] = []
        self._key: Any = None
        self._index = 0
        self._skip = 0
        self._in_records = False
        self._state = _START
        self._member = ""
        self._seen: set[str] = set()

    def feed(self, events: list[tuple[str, Any]]) -> list[RawRecord | MalformedRecord]:
        """Consume a batch of events; return the records they completed."""
        out: list[RawRecord | MalformedRecord] = []
        append = out.append
        # State lives in locals for the loop: attribute access per event is
        # measurably slower at hundreds of thousands of events per second.
        stack = self._stack
        key = self._key
        index = self._index
        skip = self._skip
        in_records = self._in_records
        for event, value in events:
            if stack:
                if event == "map_key":
                    key = value
                elif event == "end_map" or event == "end_array":
                    finished = stack.pop()
                    if not stack:
                        append(RawRecord(index, finished, False))
                        index += 1
                else:
                    if event == "start_map":
                        child: Any = {}
                    elif event == "start_array":
                        child = []
                    else:
                        child = value
                    top = stack[-1]
                    if type(top) is list:
                        top.append(child)
                    else:
                        top[key] = child
                    if event == "start_map" or event == "start_array":
                        if len(stack) < MAX_JSON_DEPTH:
                            stack.append(child)
                        else:
                            # Abandon the record; count containers until it closes.
                            skip = len(stack) + 1
                            stack.clear()
            elif skip:
                if event == "start_map" or event == "start_array":
                    skip += 1
                elif event == "end_map" or event == "end_array":
                    skip -= 1
                    if not skip:
                        append(
                            MalformedRecord(
                                index,
                                "malformed_record",
                                f"record {index}: nested deeper than {MAX_JSON_DEPTH} levels",
                            )
                        )
                        index += 1
            elif in_records:
                if event == "start_map":
                    stack.append({})
                elif event == "start_array":
                    stack.append([])
                elif event == "end_array":
                    in_records = False
                    if self._state == _ARRAY:
                        self._state = _DONE
                else:
                    append(RawRecord(index, value, False))
                    index += 1
            else:
                in_records = self._structure(event, value)
        self._key = key
        self._index = index
        self._skip = skip
        self._in_records = in_records
        return out

    def finish(self) -> None:
        """Called once the parser has accepted the whole document."""
        if self._state != _DONE:  # the parser would have failed first; belt and braces
            raise PayloadError(400, "body is not a complete JSON document")

    def _structure(self, event: str, value: Any) -> bool:
        """Handle an event outside the records array; True when the records array opens."""
        state = self._state
        if state == _START:
            if event == "start_array":
                self._state = _ARRAY
                return True
            if event == "start_map":
                self._state = _ENVELOPE
                return False
            raise PayloadError(
                422, 'the JSON body must be an array of records or an object with "records"'
            )
        if state == _ENVELOPE:
            if event == "map_key":
                return self._envelope_key(value)
            # end_map: the only other event the parser allows here.
            if "records" not in self._seen:
                raise PayloadError(422, 'the JSON envelope has no "records" array')
            self._state = _DONE
            return False
        if state == _MEMBER:
            self._state = _ENVELOPE
            member = self._member
            if member == "records":
                if event != "start_array":
                    raise PayloadError(422, '"records" must be an array')
                return True
            if event != "string":
                raise PayloadError(422, f'"{member}" must be a string')
            if member == "target":
                self._reader.target = value
            else:
                self._reader.operation = value
            return False
        raise PayloadError(400, "unexpected JSON after the end of the body")

    def _envelope_key(self, name: str) -> bool:
        if name not in _ENVELOPE_KEYS:
            raise PayloadError(
                422,
                f"unknown envelope key {name[:64]!r}; "
                'only "target", "operation" and "records" are allowed',
            )
        if name in self._seen:
            raise PayloadError(422, f'the envelope has "{name}" twice')
        if "records" in self._seen:
            # Records already went out under the earlier settings; applying a
            # later "target" retroactively would misfile them.
            raise PayloadError(422, f'"{name}" must come before "records" in the envelope')
        self._seen.add(name)
        self._member = name
        self._state = _MEMBER
        return False


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

    async def _lines(self, splitter: _LineSplitter) -> AsyncIterator[list[bytes]]:
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
        splitter = _LineSplitter(limit)
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
                    if line is _TOO_LONG:
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
        splitter = _LineSplitter(self._max_record_bytes)
        framer = _CsvFramer(self._max_record_bytes, splitter.dropped_quotes)
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
        framer = _JsonFramer(self)
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
