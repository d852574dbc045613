"""RecordConverter: every JSON and text rule, every error code, and what messages leave out."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import SluiceError
from schemas.targets import Column, ColumnType, Target
from schemas.validation import RecordConverter, RecordInvalid

_TYPES = {
    "s": ColumnType.STRING,
    "i": ColumnType.INT,
    "l": ColumnType.LONG,
    "f": ColumnType.FLOAT,
    "d": ColumnType.DOUBLE,
    "b": ColumnType.BOOLEAN,
    "tm": ColumnType.TIMESTAMP_MILLIS,
    "tu": ColumnType.TIMESTAMP_MICROS,
    "dt": ColumnType.DATE,
}

# Every type twice: a required column named after the type key, and a nullable "n_" one.
ALL = Target(
    name="all_types",
    columns=tuple(Column(name, kind, False) for name, kind in _TYPES.items())
    + tuple(Column(f"n_{name}", kind, True) for name, kind in _TYPES.items()),
    key=("l",),
    avro_schema={},
)
CONVERTER = RecordConverter(ALL)
NAMES = ALL.column_names

VALID_JSON: dict[str, Any] = {
    "s": "hello",
    "i": 42,
    "l": 2**40,
    "f": 1.5,
    "d": 2.25,
    "b": True,
    "tm": "2023-10-01T12:00:00Z",
    "tu": "2023-10-01T12:00:00.123456Z",
    "dt": "2023-10-01",
}
NOON = datetime(2023, 10, 1, 12, 0, tzinfo=UTC)
VALID_ROW_PREFIX = (
    "hello",
    42,
    2**40,
    1.5,
    2.25,
    True,
    NOON,
    NOON.replace(microsecond=123456),
    date(2023, 10, 1),
)
VALID_TEXT: dict[str, str] = {
    "s": "hello",
    "i": "42",
    "l": str(2**40),
    "f": "1.5",
    "d": "2.25",
    "b": "true",
    "tm": "2023-10-01T12:00:00Z",
    "tu": "2023-10-01T12:00:00.123456Z",
    "dt": "2023-10-01",
}


def json_value(name: str, value: Any) -> Any:
    """Convert a record whose only non-default value is ``name``; return that column's value."""
    record = dict(VALID_JSON)
    record[name] = value
    return CONVERTER.from_json(record)[NAMES.index(name)]


def text_value(name: str, value: str | None) -> Any:
    record: dict[str, str | None] = dict(VALID_TEXT)
    record[name] = value
    return CONVERTER.from_text(record)[NAMES.index(name)]


def json_error(name: str, value: Any) -> RecordInvalid:
    with pytest.raises(RecordInvalid) as caught:
        json_value(name, value)
    return caught.value


def text_error(name: str, value: str | None) -> RecordInvalid:
    with pytest.raises(RecordInvalid) as caught:
        text_value(name, value)
    return caught.value


# --- whole records ---------------------------------------------------------------


def test_valid_json_record_gives_row_in_column_order() -> None:
    row = CONVERTER.from_json(VALID_JSON)
    assert row == VALID_ROW_PREFIX + (None,) * len(_TYPES)
    assert type(row) is tuple


def test_valid_text_record_gives_the_same_row() -> None:
    assert CONVERTER.from_text(VALID_TEXT) == CONVERTER.from_json(VALID_JSON)


def test_nullable_columns_take_values_and_nulls() -> None:
    record = dict(VALID_JSON) | {f"n_{k}": v for k, v in VALID_JSON.items()}
    assert CONVERTER.from_json(record) == VALID_ROW_PREFIX + VALID_ROW_PREFIX
    record = dict(VALID_JSON) | {f"n_{k}": None for k in VALID_JSON}
    assert CONVERTER.from_json(record) == VALID_ROW_PREFIX + (None,) * len(_TYPES)


def test_record_invalid_is_a_sluice_error_with_code_and_message() -> None:
    error = json_error("i", "x")
    assert isinstance(error, SluiceError)
    assert error.code == "wrong_type"
    assert error.field == "i"
    assert error.message == "field 'i': expected int, got string"
    assert str(error) == "wrong_type: field 'i': expected int, got string"


@pytest.mark.parametrize("raw", [[], [VALID_JSON], "s", 1, 1.5, True, None])
def test_not_an_object(raw: object) -> None:
    with pytest.raises(RecordInvalid) as caught:
        CONVERTER.from_json(raw)
    assert caught.value.code == "not_an_object"


@pytest.mark.parametrize("name", list(_TYPES))
def test_missing_required_field(name: str) -> None:
    record = {k: v for k, v in VALID_JSON.items() if k != name}
    with pytest.raises(RecordInvalid) as caught:
        CONVERTER.from_json(record)
    assert (caught.value.code, caught.value.field) == ("missing_field", name)
    text = {k: v for k, v in VALID_TEXT.items() if k != name}
    with pytest.raises(RecordInvalid) as caught:
        CONVERTER.from_text(text)
    assert (caught.value.code, caught.value.field) == ("missing_field", name)


@pytest.mark.parametrize("name", list(_TYPES))
def test_null_in_required_field(name: str) -> None:
    error = json_error(name, None)
    assert (error.code, error.field) == ("null_not_allowed", name)


def test_unknown_field_is_rejected_and_named() -> None:
    with pytest.raises(RecordInvalid) as caught:
        CONVERTER.from_json(VALID_JSON | {"extra": 1})
    assert caught.value.code == "unknown_field"
    assert "'extra'" in caught.value.message
    with pytest.raises(RecordInvalid) as caught:
        CONVERTER.from_text(VALID_TEXT | {"extra": "1"})
    assert caught.value.code == "unknown_field"


def test_unknown_field_message_is_bounded() -> None:
    extras = {f"{'k' * 500}{n}": n for n in range(50)}
    with pytest.raises(RecordInvalid) as caught:
        CONVERTER.from_json(VALID_JSON | extras)
    assert caught.value.code == "unknown_field"
    assert "and 45 more" in caught.value.message
    assert len(caught.value.message) < 600


# --- messages never carry values -------------------------------------------------

SECRET = "SECRET-4f1c"

_LEAKY_JSON: list[tuple[str, Any]] = [
    ("s", SECRET + "\x00"),
    ("i", SECRET),
    ("l", [SECRET]),
    ("d", {SECRET: SECRET}),
    ("b", SECRET),
    ("tm", SECRET),
    ("tm", "2023-10-01T12:00:00 " + SECRET),
    ("tu", SECRET),
    ("dt", SECRET),
]


@pytest.mark.parametrize(("name", "value"), _LEAKY_JSON)
def test_json_messages_do_not_include_values(name: str, value: Any) -> None:
    error = json_error(name, value)
    assert SECRET not in error.message
    assert SECRET not in str(error)


@pytest.mark.parametrize("name", ["i", "l", "f", "d", "b", "tm", "tu", "dt"])
def test_text_messages_do_not_include_values(name: str) -> None:
    error = text_error(name, SECRET)
    assert SECRET not in error.message


# --- JSON: strings ---------------------------------------------------------------


def test_string_with_nul_is_invalid_string() -> None:
    assert json_error("s", "a\x00b").code == "invalid_string"
    assert json_error("n_s", "\x00").code == "invalid_string"


@pytest.mark.parametrize("value", [1, 1.5, True, ["x"], {"x": 1}])
def test_string_wrong_type(value: Any) -> None:
    assert json_error("s", value).code == "wrong_type"


def test_empty_and_unicode_strings_pass_through() -> None:
    assert json_value("s", "") == ""
    assert json_value("s", "naïve ☃ \U0001f600") == "naïve ☃ \U0001f600"


# --- JSON: integers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("i", 0, 0),
        ("i", -(2**31), -(2**31)),
        ("i", 2**31 - 1, 2**31 - 1),
        ("l", -(2**63), -(2**63)),
        ("l", 2**63 - 1, 2**63 - 1),
    ],
)
def test_integer_bounds_accepted(name: str, value: int, expected: int) -> None:
    result = json_value(name, value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("i", 2**31),
        ("i", -(2**31) - 1),
        ("l", 2**63),
        ("l", -(2**63) - 1),
        ("l", 1e30),  # what JSON parsers make of integers beyond 64 bits
        ("i", -1e10),
    ],
)
def test_integer_out_of_range(name: str, value: Any) -> None:
    assert json_error(name, value).code == "out_of_range"


@pytest.mark.parametrize(
    ("name", "value"),
    [("i", True), ("l", False), ("l", 1.0), ("l", 1.5), ("i", "1"), ("l", [1])],
)
def test_integer_wrong_type(name: str, value: Any) -> None:
    assert json_error(name, value).code == "wrong_type"


# --- JSON: floats ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("d", 1, 1.0),
        ("d", -0.5, -0.5),
        ("d", 2**60, float(2**60)),
        ("d", 1.7976931348623157e308, 1.7976931348623157e308),
        ("f", 1.5, 1.5),
        ("f", 3, 3.0),
        # FLOAT is float32: values are rounded exactly as an Avro float would be.
        ("f", 0.1, 0.10000000149011612),
    ],
)
def test_real_values(name: str, value: Any, expected: float) -> None:
    result = json_value(name, value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("d", math.nan),
        ("d", math.inf),
        ("d", -math.inf),
        ("d", 10**400),
        ("f", 1e39),
        ("f", -3.5e38),
        ("f", math.nan),
    ],
)
def test_real_out_of_range(name: str, value: Any) -> None:
    assert json_error(name, value).code == "out_of_range"


@pytest.mark.parametrize(("name", "value"), [("d", True), ("f", False), ("d", "1.5"), ("d", [])])
def test_real_wrong_type(name: str, value: Any) -> None:
    assert json_error(name, value).code == "wrong_type"


# --- JSON: booleans --------------------------------------------------------------


def test_boolean() -> None:
    assert json_value("b", False) is False
    assert json_value("b", True) is True


@pytest.mark.parametrize("value", [1, 0, 1.0, "true", "1", [True]])
def test_boolean_wrong_type(value: Any) -> None:
    assert json_error("b", value).code == "wrong_type"


# --- JSON: timestamps ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-10-01T12:00:00Z", NOON),
        ("2023-10-01T14:00:00+02:00", NOON),
        ("2023-10-01T07:30:00-04:30", NOON),
        ("2023-10-01t12:00:00z", NOON),
        ("2023-10-01 12:00:00Z", NOON),
        ("2023-10-01T12:00:00-00:00", NOON),
        ("2023-10-01T12:00:00.5Z", NOON.replace(microsecond=500000)),
        # timestamp-millis keeps milliseconds only, like an Avro producer record.
        ("2023-10-01T12:00:00.123456Z", NOON.replace(microsecond=123000)),
        ("2023-10-01T12:00:00.123456789Z", NOON.replace(microsecond=123000)),
        (1696161600000, NOON),
        (1696161600123, NOON.replace(microsecond=123000)),
        (-1, datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999Z", datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
    ],
)
def test_timestamp_millis(value: Any, expected: datetime) -> None:
    result = json_value("tm", value)
    assert result == expected
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-10-01T12:00:00.123456Z", NOON.replace(microsecond=123456)),
        ("2023-10-01T12:00:00.1234567Z", NOON.replace(microsecond=123456)),
        (1696161600123456, NOON.replace(microsecond=123456)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_timestamp_micros(value: Any, expected: datetime) -> None:
    result = json_value("tu", value)
    assert result == expected
    assert result.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        "2023-10-01T12:00:00",  # no time zone
        "2023-10-01",  # date only: fromisoformat would accept it
        "2023-10-01T12:00Z",  # no seconds
        "2023-10-01T12Z",
        "20231001T120000Z",  # ISO 8601 basic format
        "2023-10-01X12:00:00Z",  # fromisoformat accepts any separator
        "2023-10-01T12:00:00,5Z",
        "2023-10-01T12:00:00+0200",
        "2023-10-01T12:00:00+02",
        "2023-13-01T12:00:00Z",
        "2023-02-30T12:00:00Z",
        "2023-10-01T24:00:00Z",
        "2023-10-01T23:59:60Z",
        "2023-10-01T12:00:00.Z",
        " 2023-10-01T12:00:00Z",
        "２０２３-10-01T12:00:00Z",
        "",
        "now",
    ],
)
def test_invalid_timestamp_strings(value: str) -> None:
    assert json_error("tm", value).code == "invalid_timestamp"
    assert json_error("tu", value).code == "invalid_timestamp"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tm", "0001-01-01T00:00:00+01:00"),  # year 0 once in UTC
        ("tm", "9999-12-31T23:00:00-05:00"),  # year 10000 once in UTC
        ("tm", "0000-06-01T00:00:00Z"),
        ("tm", 253402300800000),  # 10000-01-01 in ms
        ("tm", -62135596800001),  # just before 0001-01-01 in ms
        ("tu", 253402300800000000),
        ("tu", -(10**20)),
        ("tm", 10**30),
    ],
)
def test_timestamp_out_of_range(name: str, value: Any) -> None:
    assert json_error(name, value).code == "out_of_range"


@pytest.mark.parametrize("value", [True, 1.5, 1696161600000.0, [1], {"t": 1}])
def test_timestamp_wrong_type(value: Any) -> None:
    assert json_error("tm", value).code == "wrong_type"


def test_timestamp_accepts_decoded_aware_datetimes() -> None:
    plus_two = timezone(timedelta(hours=2))
    value = datetime(2023, 10, 1, 14, 0, 0, 123456, tzinfo=plus_two)
    assert json_value("tm", value) == NOON.replace(microsecond=123000)
    assert json_value("tu", value) == NOON.replace(microsecond=123456)
    assert json_error("tm", datetime(2023, 10, 1, 12)).code == "invalid_timestamp"  # noqa: DTZ001


# --- JSON: dates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-10-01", date(2023, 10, 1)),
        ("0001-01-01", date(1, 1, 1)),
        ("9999-12-31", date(9999, 12, 31)),
        (19631, date(2023, 10, 1)),
        (0, date(1970, 1, 1)),
        (-719162, date(1, 1, 1)),
        (2932896, date(9999, 12, 31)),
        (date(2020, 2, 29), date(2020, 2, 29)),
    ],
)
def test_date(value: Any, expected: date) -> None:
    result = json_value("dt", value)
    assert result == expected
    assert type(result) is date


@pytest.mark.parametrize("value", [-719163, 2932897, 10**20])
def test_date_out_of_range(value: int) -> None:
    assert json_error("dt", value).code == "out_of_range"


@pytest.mark.parametrize(
    "value",
    [
        "20231001",
        "2023-W40-1",
        "2023-02-30",
        "2023-10-01T00:00:00Z",
        "2023-1-01",
        "",
        True,
        1.0,
        datetime(2023, 10, 1, tzinfo=UTC),
    ],
)
def test_date_wrong_type(value: Any) -> None:
    assert json_error("dt", value).code == "wrong_type"


# --- text (CSV) ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["i", "l", "f", "d", "b", "tm", "tu", "dt"])
def test_text_empty_means_null(name: str) -> None:
    assert text_value(f"n_{name}", "") is None
    assert text_value(f"n_{name}", None) is None
    assert text_error(name, "").code == "null_not_allowed"
    assert text_error(name, None).code == "null_not_allowed"


def test_text_empty_string_stays_a_string() -> None:
    assert text_value("s", "") == ""
    assert text_value("n_s", "") == ""
    assert text_value("n_s", None) is None
    assert text_error("s", None).code == "null_not_allowed"
    assert text_error("s", "nul\x00").code == "invalid_string"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("i", "0", 0),
        ("i", "-7", -7),
        ("i", "+7", 7),
        ("i", "2147483647", 2**31 - 1),
        ("l", "-9223372036854775808", -(2**63)),
        ("l", "007", 7),
    ],
)
def test_text_integers(name: str, value: str, expected: int) -> None:
    assert text_value(name, value) == expected


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("i", "2147483648", "out_of_range"),
        ("l", "9223372036854775808", "out_of_range"),
        ("l", "9" * 5000, "out_of_range"),
        ("i", " 1", "wrong_type"),
        ("i", "1 ", "wrong_type"),
        ("i", "1_000", "wrong_type"),
        ("i", "1.0", "wrong_type"),
        ("i", "1e3", "wrong_type"),
        ("i", "٣", "wrong_type"),
        ("l", "0x10", "wrong_type"),
        ("l", "-", "wrong_type"),
        ("l", "true", "wrong_type"),
    ],
)
def test_text_integer_errors(name: str, value: str, code: str) -> None:
    assert text_error(name, value).code == code


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("d", "1.5", 1.5),
        ("d", "-2", -2.0),
        ("d", "1e3", 1000.0),
        ("d", "1E-3", 0.001),
        ("d", ".5", 0.5),
        ("d", "5.", 5.0),
        ("d", "+0.25", 0.25),
        ("f", "0.1", 0.10000000149011612),
    ],
)
def test_text_reals(name: str, value: str, expected: float) -> None:
    result = text_value(name, value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("d", "nan", "out_of_range"),
        ("d", "NaN", "out_of_range"),
        ("d", "inf", "out_of_range"),
        ("d", "-Infinity", "out_of_range"),
        ("d", "1e999", "out_of_range"),
        ("f", "1e39", "out_of_range"),
        ("d", "abc", "wrong_type"),
        ("d", "1,5", "wrong_type"),
        ("d", " 1.5", "wrong_type"),
        ("d", "1_0", "wrong_type"),
        ("d", ".", "wrong_type"),
        ("d", "e5", "wrong_type"),
    ],
)
def test_text_real_errors(name: str, value: str, code: str) -> None:
    assert text_error(name, value).code == code


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("True", True), ("1", True), ("false", False),
     ("False", False), ("0", False)],
)
def test_text_booleans(value: str, expected: bool) -> None:
    assert text_value("b", value) is expected


@pytest.mark.parametrize("value", ["yes", "no", "t", "f", "2", " true", "on"])
def test_text_boolean_errors(value: str) -> None:
    assert text_error("b", value).code == "wrong_type"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("tm", "2023-10-01T14:00:00+02:00", NOON),
        ("tm", "1696161600000", NOON),
        ("tm", "-1000", datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("tu", "1696161600000001", NOON.replace(microsecond=1)),
        ("tu", "2023-10-01T12:00:00.000001Z", NOON.replace(microsecond=1)),
    ],
)
def test_text_timestamps(name: str, value: str, expected: datetime) -> None:
    assert text_value(name, value) == expected


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("2023-10-01T12:00:00", "invalid_timestamp"),
        ("2023-10-01", "invalid_timestamp"),
        ("+1000", "invalid_timestamp"),
        ("1.5", "invalid_timestamp"),
        ("--1", "invalid_timestamp"),
        ("99999999999999999999", "out_of_range"),
        ("9" * 5000, "out_of_range"),
    ],
)
def test_text_timestamp_errors(value: str, code: str) -> None:
    assert text_error("tm", value).code == code


def test_text_dates() -> None:
    assert text_value("dt", "2023-10-01") == date(2023, 10, 1)
    assert text_value("dt", "19631") == date(2023, 10, 1)
    assert text_value("dt", "-1") == date(1969, 12, 31)
    assert text_error("dt", "01/10/2023").code == "wrong_type"
    assert text_error("dt", "99999999").code == "out_of_range"


# --- properties ------------------------------------------------------------------

_AWARE = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 - bounds for naive draws, zone added below
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@given(_AWARE, st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_rfc3339_round_trips_to_the_same_instant(instant: datetime, offset: int) -> None:
    local = instant.astimezone(timezone(timedelta(minutes=offset)))
    text = local.isoformat()
    assert json_value("tu", text) == instant
    millis = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    assert json_value("tm", text) == millis
    assert text_value("tm", text) == millis


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_long_round_trips_from_json_and_text(number: int) -> None:
    assert json_value("l", number) == number
    assert text_value("l", str(number)) == number


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_double_text_and_json_agree(number: float) -> None:
    assert json_value("d", number) == number
    assert text_value("d", repr(number)) == number


@given(st.text())
def test_any_string_is_stored_or_rejected_for_nul(text: str) -> None:
    if "\x00" in text:
        assert json_error("s", text).code == "invalid_string"
    else:
        assert json_value("s", text) == text
