"""Cutting a byte stream into lines of bounded length, for the NDJSON and CSV paths."""

from __future__ import annotations

from collections import deque
from typing import Final

from schemas.received import RECORD_HEAD_BYTES

# Stands in for a line longer than the record limit, which was skipped rather
# than buffered. A distinct object built at run time, so `is` never matches
# input bytes; it is not valid JSON, so it only surfaces on the error path.
TOO_LONG: Final = b"".join([b"\x00", b"line-too-long"])


class LineSplitter:
    """Cuts a byte stream into lines (without the newline) of bounded length.

    Lines over the limit come out as ``TOO_LONG`` and are never held whole;
    the number of double quotes each contained goes to ``dropped_quotes`` so
    the CSV framer can keep track of quoting across them, and its first
    RECORD_HEAD_BYTES to ``dropped_heads``, for its failure to show. Whoever
    takes a ``TOO_LONG`` line takes its entry of each.
    """

    __slots__ = ("_limit", "_parts", "_pending", "_skipping", "_quotes", "_head",
                 "dropped_quotes", "dropped_heads")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._pending = 0
        self._skipping = False
        self._quotes = 0
        self._head = b""
        self.dropped_quotes: deque[int] = deque()
        self.dropped_heads: deque[bytes] = deque()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines ending in this chunk; the unfinished tail is kept."""
        dropped_first = False
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._quotes += chunk.count(b'"')
                self._extend_head(chunk)
                return []
            lines = chunk.split(b"\n")
            self.dropped_quotes.append(self._quotes + lines[0].count(b'"'))
            self._extend_head(lines[0])
            self.dropped_heads.append(self._head)
            self._skipping = False
            self._quotes = 0
            self._head = b""
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
            lines[0] = TOO_LONG
        if tail:
            self._hold(tail)
        return lines

    def finish(self) -> list[bytes]:
        """The last line, when the body does not end with a newline."""
        if self._skipping:
            self._skipping = False
            self.dropped_quotes.append(self._quotes)
            self.dropped_heads.append(self._head)
            self._head = b""
            return [TOO_LONG]
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
            for part in self._parts:
                self._extend_head(part)
            self._parts = []
            self._pending = 0

    def _extend_head(self, data: bytes) -> None:
        """Keep the start of the line being skipped, up to RECORD_HEAD_BYTES."""
        room = RECORD_HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += data[:room]

    def _drop_long(self, lines: list[bytes]) -> None:
        limit = self._limit
        for position, line in enumerate(lines):
            if len(line) > limit:
                self.dropped_quotes.append(line.count(b'"'))
                self.dropped_heads.append(line[:RECORD_HEAD_BYTES])
                lines[position] = TOO_LONG
