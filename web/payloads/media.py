"""The body formats the ingress accepts, and their Content-Type headers."""

from __future__ import annotations

import enum
from typing import Final

from web.echo import echo
from web.payloads.records import PayloadError


class MediaType(enum.StrEnum):
    """The body formats the ingress decodes."""

    JSON = "application/json"
    NDJSON = "application/x-ndjson"
    CSV = "text/csv"
    PROTOBUF = "application/x-protobuf"
    """Length-delimited messages of the target's class (GET /v1/targets/{name}.proto)."""
    AVRO = "application/avro"
    """An Avro Object Container File, its schema resolved against the target's."""


BINARY_MEDIA_TYPES: Final = frozenset({MediaType.PROTOBUF, MediaType.AVRO})
"""Bodies decoded by the target's schema, which they do not name: ?target= must."""

_MEDIA_TYPES: Final = {
    "application/json": MediaType.JSON,
    "application/x-ndjson": MediaType.NDJSON,
    "application/ndjson": MediaType.NDJSON,
    "application/jsonl": MediaType.NDJSON,
    "text/csv": MediaType.CSV,
    "application/x-protobuf": MediaType.PROTOBUF,
    "application/protobuf": MediaType.PROTOBUF,
    "application/avro": MediaType.AVRO,
}
MEDIA_TYPE_NAMES: Final = tuple(_MEDIA_TYPES)
"""Every Content-Type a body may carry, aliases included."""


def media_type_for(content_type: str | None) -> MediaType:
    """Map a Content-Type header to a MediaType; parameters such as charset are ignored."""
    if content_type is None or not content_type.strip():
        raise PayloadError(415, "a Content-Type header is required")
    essence = content_type.partition(";")[0].strip().lower()
    media_type = _MEDIA_TYPES.get(essence)
    if media_type is None:
        accepted = ", ".join(_MEDIA_TYPES)
        raise PayloadError(415, f"Content-Type {echo(essence)} is not one of {accepted}")
    return media_type
