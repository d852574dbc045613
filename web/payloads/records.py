"""What reading a payload produces: framed records, malformed records, or the whole payload rejected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from app.errors import SluiceError

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
