"""Schemathesis hooks for the contract test: how NDJSON and CSV bodies go on the wire and
how an NDJSON answer is read, since the OpenAPI document describes NDJSON as the array of
its lines (web/openapi.py). Loaded by schemathesis through SCHEMATHESIS_HOOKS."""

from __future__ import annotations

import json
from typing import Any

import orjson
import schemathesis

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def _json(value: Any) -> bytes:
    """JSON as generated, lone surrogates and integers past 64 bits included."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@schemathesis.serializer(*NDJSON_TYPES)
def ndjson_body(ctx: Any, value: Any) -> bytes:
    """Each element of the generated array on a line of its own."""
    return b"".join(_json(item) + b"\n" for item in value)


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """An NDJSON body is a sequence of lines: a value that is not an array (a negative
    case of the array that describes it) has no NDJSON form, so it is not sent."""
    return case.media_type not in NDJSON_TYPES or isinstance(case.body, list)


@schemathesis.serializer("text/csv")
def csv_body(ctx: Any, value: Any) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else _json(value)


@schemathesis.deserializer("application/x-ndjson")
def ndjson_answer(ctx: Any, response: Any) -> list[Any]:
    """The lines of a results stream, each parsed: a line that is not JSON fails the check."""
    return [orjson.loads(line) for line in response.content.splitlines() if line]
