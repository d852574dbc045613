"""JSON body framing: ijson events in, one record per element of the records array out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from schemas.received import RecordText, json_text
from web.echo import echo
from web.payloads.records import (
    MalformedRecord,
    PayloadError,
    RawRecord,
    RecordCode,
    record_too_large,
)

if TYPE_CHECKING:
    from web.payloads.reader import PayloadReader

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting kept inside one JSON array element. No column takes a nested
value anyway; the cap keeps a hostile record from building a deep object."""

# JSON body states, outside the records array.
_START, _ARRAY, _ENVELOPE, _MEMBER, _DONE = range(5)
_ENVELOPE_KEYS: Final = frozenset({"target", "operation", "records"})
# Why a record being skipped is skipped.
_TOO_DEEP, _TOO_WIDE = range(2)


class JsonFramer:
    """Turns ijson events into records: a top-level array, or the envelope's "records".

    Iterative on purpose (an explicit stack, no recursion) so no nesting depth
    can exhaust the interpreter stack.

    Nothing here is held without bound. A record over ``max_fields`` values is
    abandoned and skipped unbuilt (a per-record failure). The parser must also reach
    the end of an element, or of the envelope head before "records", within
    ``max_bytes`` of body: past that the body is refused with 413, since the parser
    buffers a long string whole and skipping the element would mean parsing it all.
    """

    def __init__(
        self, reader: PayloadReader, *, max_bytes: int, max_fields: int,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self._reader = reader
        self._max_bytes = max_bytes
        self._max_fields = max_fields
        self._on_settled = on_settled
        self._stack: list[Any] = []
        self._key: Any = None
        self._index = 0
        self._skip = 0
        self._skip_reason = _TOO_DEEP
        self._skipped_text: RecordText | None = None
        """What was read of the record being skipped."""
        self._fields = 0
        self._in_records = False
        self._state = _START
        self._member = ""
        self._seen: set[str] = set()
        self._mark = 0
        """Body position (end of a parser slice) by which the last element closed."""

    def feed(
        self, events: list[tuple[str, Any]], position: int
    ) -> list[RawRecord | MalformedRecord]:
        """Consume the events of the body up to ``position``; return the records they completed."""
        out: list[RawRecord | MalformedRecord] = []
        append = out.append
        # State lives in locals for the loop: attribute access per event is
        # measurably slower at hundreds of thousands of events per second.
        stack = self._stack
        key = self._key
        index = self._index
        skip = self._skip
        fields = self._fields
        max_fields = self._max_fields
        in_records = self._in_records
        closed = False  # an element (or the envelope head) ended in these events
        for event, value in events:
            if stack:
                if event == "map_key":
                    key = value
                elif event == "end_map" or event == "end_array":
                    finished = stack.pop()
                    if not stack:
                        append(RawRecord(index, finished, False))
                        index += 1
                        closed = True
                else:
                    container = event == "start_map" or event == "start_array"
                    fields += 1
                    if fields > max_fields:
                        # Abandon the record; count containers until it closes.
                        skip = len(stack) + container
                        self._abandon(stack, _TOO_WIDE)
                        continue
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
                    if container:
                        if len(stack) < MAX_JSON_DEPTH:
                            stack.append(child)
                        else:
                            skip = len(stack) + 1
                            self._abandon(stack, _TOO_DEEP)
            elif skip:
                if event == "start_map" or event == "start_array":
                    skip += 1
                elif event == "end_map" or event == "end_array":
                    skip -= 1
                    if not skip:
                        append(self._skipped(index))
                        index += 1
                        closed = True
            elif in_records:
                if event == "start_map":
                    stack.append({})
                    fields = 0
                elif event == "start_array":
                    stack.append([])
                    fields = 0
                elif event == "end_array":
                    in_records = False
                    closed = True
                    if self._state == _ARRAY:
                        self._state = _DONE
                else:
                    append(RawRecord(index, value, False))
                    index += 1
                    closed = True
            else:
                in_records = self._structure(event, value)
                if in_records:
                    closed = True
                    if self._on_settled is not None:
                        self._on_settled()
        self._key = key
        self._index = index
        self._skip = skip
        self._fields = fields
        self._in_records = in_records
        if closed:
            self._mark = position
        elif position - self._mark > self._max_bytes:
            raise self._too_large()
        return out

    def finish(self) -> None:
        """Called once the parser has accepted the whole document."""
        if self._state != _DONE:  # the parser would have failed first; belt and braces
            raise PayloadError(400, "body is not a complete JSON document")

    def _abandon(self, stack: list[Any], reason: int) -> None:
        """Stop building the record on ``stack``; keep what was read of it, for its failure."""
        self._skip_reason = reason
        self._skipped_text = json_text(stack[0], partial=True)
        stack.clear()

    def _skipped(self, index: int) -> MalformedRecord:
        text, self._skipped_text = self._skipped_text, None
        if self._skip_reason == _TOO_WIDE:
            return MalformedRecord(index, RecordCode.TOO_LARGE,
                                   f"record {index}: more than {self._max_fields} fields", text)
        return MalformedRecord(index, RecordCode.MALFORMED,
                               f"record {index}: nested deeper than {MAX_JSON_DEPTH} levels", text)

    def _too_large(self) -> PayloadError:
        limit = self._max_bytes
        if self._in_records:
            return record_too_large(
                f"record {self._index} is larger than {limit} bytes; "
                "send it alone as an NDJSON line to have only it refused")
        if "records" in self._seen or self._state == _DONE:
            return record_too_large(f"more than {limit} bytes follow the records")
        return record_too_large(f'the JSON envelope before "records" is larger than {limit} bytes')

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
                f"unknown envelope key {echo(name)}; "
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
