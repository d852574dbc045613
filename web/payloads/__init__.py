"""Streaming request-body decoding: JSON, NDJSON, CSV, Protobuf or Avro in, records out,
memory flat.

``reader`` holds PayloadReader, which decompresses the body, enforces its size and
picks the framing by media type: ``lines`` cuts NDJSON and CSV bodies into bounded
lines, ``csv_format`` and ``json_format`` frame CSV rows and JSON arrays,
``protobuf_format`` length-delimited messages and ``avro_format`` Avro object container
files (``binary`` holds what those two share). ``limits`` bounds each record (bytes and
fields). ``records`` and ``media`` hold what they share: the records and errors produced,
and the accepted media types.
"""

from web.payloads.json_format import MAX_JSON_DEPTH
from web.payloads.limits import DEFAULT_MAX_RECORD_BYTES, DEFAULT_MAX_RECORD_FIELDS
from web.payloads.media import MediaType, media_type_for
from web.payloads.reader import PayloadReader
from web.payloads.records import (
    ConvertedRecord,
    LineDecoder,
    MalformedRecord,
    PayloadError,
    PayloadProblem,
    RawRecord,
    RecordCode,
)

__all__ = [
    "ConvertedRecord",
    "LineDecoder",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_MAX_RECORD_FIELDS",
    "MAX_JSON_DEPTH",
    "MalformedRecord",
    "MediaType",
    "PayloadError",
    "PayloadProblem",
    "PayloadReader",
    "RawRecord",
    "RecordCode",
    "media_type_for",
]
