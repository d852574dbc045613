"""The compiled JSON path gives exactly the exact path's row for a record it accepts, and
leaves every other record to the exact path (which then says what is wrong)."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.targets import Column, ColumnType, Target
from schemas.typed_json import TypedJsonDecoder
from schemas.validation import RecordConverter, RecordInvalid
from tests.unit.schemas.test_validation import ALL, CONVERTER, NAMES, VALID_JSON

DECODER = TypedJsonDecoder(ALL, CONVERTER)

# Values that sit on the rules' edges, for every type, plus arbitrary JSON.
_EDGES: list[Any] = [
    None, True, False, 0, 1, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**53 + 1,
    2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 1.0, -0.0, 0.5, 1e38, 3.5e38,
    1.7976931348623157e308, 1e-320, 0.1, 1.0000001, 3.4028235e38, 3.4028236e38,
    "", "x", "a\x00b", "\ud7ff", "2024-01-01T00:00:00Z",
    "2024-01-01t00:00:00z", "2024-01-01 00:00:00+01:00", "2024-01-01T00:00:00", "2024-01-01",
    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2024-02-30", "1", "-5", [], {},
    253402300799999, 253402300800000, -62135596800000, -62135596800001, 2932896, -719163,
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(_EDGES),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)


def _exact(line: bytes) -> tuple[Any, ...] | str:
    """The exact path's answer: a row, or the error code."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "malformed_record"
    try:
        return CONVERTER.from_json(value)
    except RecordInvalid as e:
        return e.code


def _same_row(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal rows, telling 0.0 from -0.0 and types apart (1 is not 1.0 in a float column)."""
    return len(a) == len(b) and all(
        type(x) is type(y) and (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)))
        and (not isinstance(x, float) or math.copysign(1, x) == math.copysign(1, y))
        for x, y in zip(a, b, strict=True))


def _check(record: dict[str, Any]) -> None:
    line = json.dumps(record).encode()  # the standard library writes integers of any size
    fast = DECODER.decode(line)
    if fast is not None:
        exact = _exact(line)
        assert isinstance(exact, tuple), f"compiled path accepted what the exact path refuses ({exact})"
        assert _same_row(fast, exact)


@pytest.mark.parametrize("name", [*NAMES, "extra"])
def test_each_edge_value_in_each_column_of_a_valid_record(name: str) -> None:
    for value in _EDGES:
        _check({**VALID_JSON, name: value})
    _check({k: v for k, v in VALID_JSON.items() if k != name})


@settings(max_examples=1000)
@given(st.dictionaries(st.sampled_from([*NAMES, "extra"]), json_values, max_size=3), st.booleans())
def test_a_record_accepted_by_the_compiled_path_gets_the_exact_path_s_row(
        changes: dict[str, Any], start_valid: bool) -> None:
    _check({**VALID_JSON, **changes} if start_valid else changes)


@pytest.mark.parametrize("line", [
    b'{"s":"a","i":1}x', b'[1]', b'"s"', b'{"s":"a\\u0000"}', b'{"s":"\\ud800"}',
    b'{"l":1e400}', b'{"l":99999999999999999999999}', b'', b'{"s":NaN}',
])
def test_anything_odd_is_left_to_the_exact_path(line: bytes) -> None:
    assert DECODER.decode(line) is None


def test_valid_records_take_the_compiled_path() -> None:
    line = orjson.dumps(VALID_JSON)
    row = DECODER.decode(line)
    assert row is not None and _same_row(row, CONVERTER.from_json(VALID_JSON))
    nulls = orjson.dumps({k: v for k, v in VALID_JSON.items() if not k.startswith("n_")})
    assert DECODER.decode(nulls) == CONVERTER.from_json(orjson.loads(nulls))


def test_columns_named_like_keywords_work() -> None:
    target = Target("kw", (Column("class", ColumnType.LONG, False),
                           Column("from", ColumnType.STRING, True)), ("class",), {})
    decoder = TypedJsonDecoder(target, RecordConverter(target))
    assert decoder.decode(b'{"class":3,"from":"x"}') == (3, "x")
    assert decoder.decode(b'{"class":3,"f0":1}') is None
