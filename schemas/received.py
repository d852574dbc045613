"""The record as received, kept with a failed outcome so that it can be corrected and resent.

It is bounded: at most RECORD_TEXT_BYTES of UTF-8, cut on a character boundary and
flagged when cut. A payload whose every record fails then costs the envelopes, the
ledger and the web's buffers at most 4 KiB per record. Only failed outcomes carry one.

The text depends on where the failure was found:

- At the ingress (a line or row that cannot be framed, a record that fails validation,
  a record too large) it is the text as it arrived: the NDJSON line, or the CSV row as CSV
  text with its fields in the header's order, both without the line end. The streaming
  JSON parser keeps no element's text, so a JSON body element is given as its decoded
  value, re-serialised as compact JSON. An element abandoned while it was read (too deep,
  too many fields) gives what was read of it, flagged cut. A Protobuf or Avro record has
  no text to give back: it is given as the JSON of its decoded values.
- By the worker (the database refused the row: a SQLSTATE, or ``write_failed``) only the
  converted values travel in the envelope. The record is then those values as a JSON
  object of the target's columns in column order (only the key for a delete), with
  timestamps in RFC 3339 UTC ("Z") and dates in ISO 8601. It gives what the record meant,
  not how it was written: a CSV row comes back as JSON, which can be sent again as it is.
  So does a record that fits no Kafka message once packed, whose text is gone by then.

A failure with nothing to show has none: a record of an envelope the worker cannot read,
or of a target it does not know, a producer's Avro message that does not decode, and a
Protobuf message of a body that does not parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Final, NamedTuple

import orjson

from schemas.targets import Target

RECORD_TEXT_BYTES: Final = 4096
"""The most of a record kept with its failure, in bytes of UTF-8."""
RECORD_HEAD_BYTES: Final = RECORD_TEXT_BYTES + 3
"""How much of a record skipped unbuffered (a line over the record limit) is kept: past the
text by a line end (CR LF) and one byte, so that a record cut there is known to be cut."""


class RecordText(NamedTuple):
    """A failed record's text, and whether it was cut to RECORD_TEXT_BYTES."""

    text: str
    truncated: bool = False


_NUL, _REPLACEMENT = b"\x00", "\ufffd".encode()


def record_text(raw: bytes | str) -> RecordText:
    """The text of a record as received (bytes that are not UTF-8 become U+FFFD, and so does
    NUL, which PostgreSQL text cannot hold: the ledger could not store the record, and its
    whole write would fail), without its line end, cut to RECORD_TEXT_BYTES on a character
    boundary."""
    whole = len(raw) <= RECORD_HEAD_BYTES  # past that, the end is cut off, line end or not
    if isinstance(raw, str):
        # More characters than that are more bytes than that: only a head needs encoding.
        raw = raw[:RECORD_HEAD_BYTES].encode("utf-8", "replace")
    if _NUL in raw:
        raw = raw[:RECORD_HEAD_BYTES].replace(_NUL, _REPLACEMENT)
    if whole:
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
    truncated = len(raw) > RECORD_TEXT_BYTES
    if truncated:
        raw = raw[:_boundary(raw)]
    text = raw.decode("utf-8", "replace")
    if "\ufffd" in text and len(data := text.encode()) > RECORD_TEXT_BYTES:
        # Replacement characters (3 bytes each) took the place of single bad bytes.
        return RecordText(data[:_boundary(data)].decode(), True)
    return RecordText(text, truncated)


def _boundary(data: bytes) -> int:
    """Where to cut ``data`` (longer than RECORD_TEXT_BYTES) so that no character is split:
    back over the continuation bytes (10xxxxxx) of a character the limit would split."""
    end = RECORD_TEXT_BYTES
    while end > RECORD_TEXT_BYTES - 3 and data[end] & 0xC0 == 0x80:
        end -= 1
    return end


def json_text(value: Any, *, partial: bool = False) -> RecordText:
    """A decoded JSON value re-serialised as compact JSON; ``partial``: only part of it was
    read, so it is flagged cut whatever its length."""
    try:
        data = orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, a lone surrogate: what json.dumps writes
        data = json.dumps(value, separators=(",", ":"), default=str).encode()
    text = record_text(data)
    return text._replace(truncated=True) if partial else text


def row_text(target: Target, row: Sequence[Any], operation: str) -> RecordText:
    """A converted row as a JSON object of the target's columns (its key alone for a delete):
    the record of a failure found by the worker, which has only the row."""
    return record_text(_row_encoder(target, operation == "delete")(row))


@cache
def _row_encoder(target: Target, key_only: bool) -> Callable[[Sequence[Any]], bytes]:
    names = target.column_names
    positions = [n for n, name in enumerate(names) if not key_only or name in target.key]
    chosen = [names[n] for n in positions]

    def encode(row: Sequence[Any]) -> bytes:
        return orjson.dumps(dict(zip(chosen, (row[n] for n in positions), strict=True)),
                            option=orjson.OPT_UTC_Z)

    return encode
