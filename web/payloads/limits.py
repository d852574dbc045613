"""How big one record may be: bytes and fields, whatever the framing.

One record is the unit the ingress holds whole in memory (a JSON element, an NDJSON
line, a CSV row), so these two limits, not the body limit, bound what a request costs.
"""

from __future__ import annotations

from typing import Any, Final

DEFAULT_MAX_RECORD_BYTES: Final = 1 << 20
"""Largest record accepted: longer NDJSON lines and CSV records become record_too_large;
a longer JSON array element rejects the body (413)."""

DEFAULT_MAX_RECORD_FIELDS: Final = 1600
"""Most values one record may hold: JSON members and array elements at any depth, or CSV
columns. PostgreSQL tables have at most 1600 columns, so no valid record needs more."""

JSON_SLICE_BYTES: Final = 64 * 1024
"""The JSON parser is fed at most this much at a time; an element's size is checked
between slices, so it is noticed at most two slices past the limit."""


def exceeds_fields(value: Any, limit: int) -> bool:
    """True if a decoded JSON value holds more than ``limit`` values at any depth.

    Iterative, so no nesting depth can exhaust the interpreter stack; it stops counting
    as soon as the limit is passed.
    """
    count = 0
    pending = [value]
    while pending:
        node = pending.pop()
        children: Any
        if type(node) is dict:
            children = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        count += len(children)
        if count > limit:
            return True
        pending.extend(child for child in children if type(child) in (dict, list))
    return False


def fields_need_counting_past(limit: int) -> int:
    """JSON text no longer than this cannot hold more than ``limit`` values.

    Every value takes at least one byte and one separator or bracket, so counting is only
    needed past two bytes per allowed value: ordinary records skip it.
    """
    return 2 * limit
