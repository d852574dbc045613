"""What reading a payload produces: framed records, malformed records, or the whole payload rejected."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from app.errors import SluiceError
from schemas.received import RecordText


class RecordCode(enum.StrEnum):
    """Per-record failure codes given while framing, before any target is consulted."""

    MALFORMED = "malformed_record"
    """Not a JSON value, a CSV row of the wrong width, or nested too deep."""
    TOO_LARGE = "record_too_large"
    """Over the record's byte or field limit, or too large for one Kafka message."""


class PayloadProblem(enum.StrEnum):
    """Problem types (the end of the problem ``type`` URI) of a payload rejected whole."""

    MALFORMED = "malformed-payload"
    TOO_LARGE = "payload-too-large"
    RECORD_TOO_LARGE = "record-too-large"
    UNSUPPORTED = "unsupported-media-type"
    UNPROCESSABLE = "unprocessable-payload"


_BY_STATUS: Final = {
    400: (PayloadProblem.MALFORMED, "Malformed payload"),
    413: (PayloadProblem.TOO_LARGE, "Payload too large"),
    415: (PayloadProblem.UNSUPPORTED, "Unsupported media type"),
    422: (PayloadProblem.UNPROCESSABLE, "Unprocessable payload"),
}
_TITLES: Final = {PayloadProblem.RECORD_TOO_LARGE: "Record too large"}


class PayloadError(SluiceError):
    """The payload as a whole is rejected (bad framing, size, media type): no record is kept.

    ``problem`` defaults from the status; ``title`` from the problem.
    """

    def __init__(
        self, status: int, detail: str, *, title: str | None = None,
        problem: PayloadProblem | None = None,
    ) -> None:
        super().__init__(detail)
        default_problem, default_title = _BY_STATUS.get(
            status, (PayloadProblem.UNPROCESSABLE, "Bad payload"))
        self.status = status
        self.problem = problem or default_problem
        self.title = title or _TITLES.get(self.problem, default_title)
        self.detail = detail


def record_too_large(detail: str) -> PayloadError:
    """413 for a record that cannot even be skipped without holding it (a JSON element)."""
    return PayloadError(413, detail, problem=PayloadProblem.RECORD_TOO_LARGE)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One framed record, not yet validated against a target.

    ``textual`` records are CSV rows (column name -> text) for
    RecordConverter.from_text; the others are decoded JSON for from_json.
    """

    index: int
    value: Any
    textual: bool
    raw: bytes | str | None = field(default=None, compare=False)
    """The text it was framed from (an NDJSON line, a CSV row with its line end), for its
    failure to show should it fail validation; None for a JSON element, whose text the
    parser does not keep. Not part of the record's value: equality ignores it."""


@dataclass(frozen=True, slots=True)
class ConvertedRecord:
    """One record already validated and converted by the compiled JSON path (a row)."""

    index: int
    row: tuple[Any, ...]


LineDecoder = Callable[[bytes], "tuple[Any, ...] | None"]
"""Decodes and validates one NDJSON line into a row, or None to leave it to the exact path."""


@dataclass(frozen=True, slots=True)
class MalformedRecord:
    """A record that could not be framed; the rest of the payload still proceeds."""

    index: int
    code: str
    message: str
    record: RecordText | None = field(default=None, compare=False)
    """What was received of it, cut (schemas.received). Equality ignores it."""
