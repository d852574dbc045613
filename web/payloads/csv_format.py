"""CSV framing: physical lines in, one record per CSV row out, the first row the header."""

from __future__ import annotations

import csv
from collections import deque

from schemas.received import RECORD_HEAD_BYTES, record_text
from web.payloads.lines import TOO_LONG
from web.payloads.records import MalformedRecord, PayloadError, RawRecord, RecordCode


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


class CsvFramer:
    """Groups lines into CSV records, tracking quote parity so quoted newlines work.

    A record ends at a newline after an even number of double quotes (RFC 4180
    doubles quotes inside quoted fields). csv.reader then parses exactly that
    group; if it disagrees about where the record ends, the group is malformed.
    """

    def __init__(self, limit: int, dropped_quotes: deque[int], dropped_heads: deque[bytes], *,
                 max_columns: int) -> None:
        self._limit = limit
        self._max_columns = max_columns
        self._dropped_quotes = dropped_quotes
        self._dropped_heads = dropped_heads
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
        self._head = ""
        """The start of a record too large to hold (at most RECORD_HEAD_BYTES characters),
        for its failure to show."""

    def line(self, line: bytes) -> RawRecord | MalformedRecord | None:
        """Take one physical line; return a record when it completes one."""
        self._line_no += 1
        if not self._open:
            self._open = True
            self._group_start = self._line_no
            self._group_bytes = 0
            self._odd = False
            self._too_large = False
            self._head = ""
        if line is TOO_LONG:
            quotes = self._dropped_quotes.popleft()
            self._overflow(self._dropped_heads.popleft().decode("utf-8", "replace") + "\n")
        else:
            quotes = line.count(b'"')
            try:
                text = line.decode()
            except UnicodeDecodeError:
                raise PayloadError(400, f"line {self._line_no}: not valid UTF-8") from None
            if self._line_no == 1 and text.startswith("\ufeff"):
                text = text[1:]  # byte order mark, as spreadsheet exports write
            if self._too_large:
                self._overflow(text + "\n")
            else:
                self._group_bytes += len(line) + 1
                if self._group_bytes > self._limit:
                    self._overflow(text + "\n")
                else:
                    self._group.append(text + "\n")
        if quotes & 1:
            self._odd = not self._odd
        if self._odd:
            return None
        return self._close_group()

    def _overflow(self, text: str) -> None:
        """The record being grouped is too large: drop what it holds, keep its start."""
        if not self._too_large:
            self._too_large = True
            self._head = "".join(self._group)[:RECORD_HEAD_BYTES]
            self._group.clear()
        if len(self._head) < RECORD_HEAD_BYTES:
            self._head += text[:RECORD_HEAD_BYTES - len(self._head)]

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
                RecordCode.TOO_LARGE, f"line {start}: record exceeds {self._limit} bytes",
                self._head)
        group = self._group
        raw = group[0] if len(group) == 1 else "".join(group)
        lines = self._feed.lines
        lines.extend(group)
        group.clear()
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
            return self._malformed(RecordCode.MALFORMED, f"line {start}: {problem}", raw)
        if not row:
            return None  # an empty line: not a record, not counted
        header = self._header
        if header is None:
            self._set_header(row)
            return None
        if len(row) != len(header):
            return self._malformed(
                RecordCode.MALFORMED,
                f"line {start}: expected {len(header)} fields, got {len(row)}", raw,
            )
        record = RawRecord(self._index, dict(zip(header, row, strict=True)), True, raw)
        self._index += 1
        return record

    def _set_header(self, row: list[str]) -> None:
        # Column names never contain spaces, so padding around them is noise.
        if len(row) > self._max_columns:
            # Every later row is as wide: refuse the payload, not each row.
            raise PayloadError(422, f"CSV header row has more than {self._max_columns} columns")
        names = tuple(name.strip() for name in row)
        if not all(names):
            raise PayloadError(422, "CSV header row has an empty column name")
        if len(set(names)) != len(names):
            raise PayloadError(422, "CSV header row names a column twice")
        self._header = names

    def _malformed(self, code: str, message: str, raw: str) -> MalformedRecord:
        record = MalformedRecord(self._index, code, message, record_text(raw))
        self._index += 1
        return record


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if message.startswith("new-line character seen"):
        # The stock text suggests reopening a file, which means nothing to a client.
        return "line break inside an unquoted field"
    return message
