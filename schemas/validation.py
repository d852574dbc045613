"""Record conversion: decoded JSON or CSV text in, a row tuple asyncpg can store out."""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from operator import call
from typing import Any, Final

from app.errors import SluiceError
from schemas.targets import Column, ColumnType, Target

__all__ = ["RecordConverter", "RecordInvalid"]

Converter = Callable[[Any], Any]


class RecordInvalid(SluiceError):
    """One record cannot be stored; the rest of its payload is unaffected.

    ``message`` names fields and types only, never values: it ends up in logs
    and reports, which must not carry payload data.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class _Missing:
    """Marks a key absent from the record, as opposed to present and null."""

    __slots__ = ()

    # Falsy like "" and None, so text converters test all three with one `not`.
    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()

_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_DOUBLE_MAX: Final = sys.float_info.max
# Rounding through float32 both range-checks FLOAT values and makes them equal
# to what an Avro producer would have sent, so keys and hashes agree.
_FLOAT32: Final = struct.Struct("<f")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICRO: Final = timedelta(microseconds=1)
_MIN_MICROS: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _ONE_MICRO
_MAX_MICROS: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _ONE_MICRO
_MIN_MILLIS: Final = _MIN_MICROS // 1000
_MAX_MILLIS: Final = _MAX_MICROS // 1000
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MAX_ORDINAL: Final = date.max.toordinal()

# fromisoformat alone is too lax (date-only, no seconds, basic format, any
# separator), so the RFC 3339 shape is checked first.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TEXT_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_TEXT_EPOCH: Final = re.compile(r"-?[0-9]+")
_TEXT_REAL: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TEXT_NON_FINITE: Final = frozenset({"nan", "inf", "infinity"})
_TEXT_BOOLEANS: Final = {"true": True, "false": False, "1": True, "0": False}

_MAX_NAMES_REPORTED: Final = 5
_MAX_NAME_CHARS: Final = 64


def _json_type(value: object) -> str:
    """The JSON-ish name of a value's type, for messages that must not show the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _wrong_type(name: str, expected: str, value: object) -> RecordInvalid:
    return RecordInvalid(
        "wrong_type", f"field {name!r}: expected {expected}, got {_json_type(value)}", name
    )


def _wrong_text(name: str, expected: str) -> RecordInvalid:
    return RecordInvalid("wrong_type", f"field {name!r}: text is not a valid {expected}", name)


def _out_of_range(name: str, expected: str) -> RecordInvalid:
    return RecordInvalid("out_of_range", f"field {name!r}: value out of range for {expected}", name)


def _invalid_timestamp(name: str) -> RecordInvalid:
    return RecordInvalid(
        "invalid_timestamp",
        f"field {name!r}: expected an RFC 3339 timestamp with a time zone or an epoch integer",
        name,
    )


def _absent(name: str, nullable: bool, value: object) -> None:
    """Null or missing value: fine for nullable columns, an error otherwise."""
    if nullable:
        return None
    if value is _MISSING:
        raise RecordInvalid("missing_field", f"field {name!r} is required", name)
    raise RecordInvalid("null_not_allowed", f"field {name!r} must not be null", name)


def _invalid_string(name: str) -> RecordInvalid:
    # PostgreSQL text cannot hold NUL; asyncpg would fail the whole batch.
    return RecordInvalid("invalid_string", f"field {name!r}: contains a NUL character", name)


def _parse_rfc3339(name: str, text: str, millis: bool) -> datetime:
    if _RFC3339.fullmatch(text) is None:
        raise _invalid_timestamp(name)
    try:
        # upper(): fromisoformat rejects the lowercase "t"/"z" RFC 3339 allows.
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        if text.startswith("0000"):
            raise _out_of_range(name, "timestamp") from None
        raise _invalid_timestamp(name) from None
    return _normalise(name, parsed, millis)


def _normalise(name: str, value: datetime, millis: bool) -> datetime:
    if value.tzinfo is not UTC:
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise _out_of_range(name, "timestamp") from None
    if millis:
        # Avro timestamp-millis cannot carry more; truncating here keeps a JSON
        # or CSV record identical to the same record sent as Avro.
        extra = value.microsecond % 1000
        if extra:
            value = value.replace(microsecond=value.microsecond - extra)
    return value


def _from_epoch(name: str, number: int, millis: bool) -> datetime:
    if millis:
        if _MIN_MILLIS <= number <= _MAX_MILLIS:
            return _EPOCH + timedelta(milliseconds=number)
    elif _MIN_MICROS <= number <= _MAX_MICROS:
        return _EPOCH + timedelta(microseconds=number)
    raise _out_of_range(name, "timestamp")


def _from_days(name: str, days: int) -> date:
    ordinal = _EPOCH_ORDINAL + days
    if 1 <= ordinal <= _MAX_ORDINAL:
        return date.fromordinal(ordinal)
    raise _out_of_range(name, "date")


def _parse_date(name: str, text: str) -> date:
    if _DATE.fullmatch(text) is not None:
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise RecordInvalid(
        "wrong_type", f"field {name!r}: expected a YYYY-MM-DD date or epoch days", name
    )


def _real_bounds(column_type: ColumnType) -> tuple[float, Callable[[float], float]]:
    if column_type is ColumnType.FLOAT:
        pack, unpack = _FLOAT32.pack, _FLOAT32.unpack

        def to_float32(number: float) -> float:
            result: float = unpack(pack(number))[0]
            return result

        return 3.4028234663852886e38, to_float32
    return _DOUBLE_MAX, float


# --- JSON converters -------------------------------------------------------------
# Each factory returns one closure per column; the expected type is tested first
# so a valid value costs a single type check.


def _json_string(name: str, nullable: bool) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is str:
            if "\x00" in value:
                raise _invalid_string(name)
            return value
        if value is None or value is _MISSING:
            return _absent(name, nullable, value)
        raise _wrong_type(name, "string", value)

    return convert


def _json_integer(name: str, nullable: bool, column_type: ColumnType) -> Converter:
    low, high = _INT32 if column_type is ColumnType.INT else _INT64
    expected = column_type.value

    def convert(value: Any) -> Any:
        if type(value) is int:
            if low <= value <= high:
                return value
            raise _out_of_range(name, expected)
        if value is None or value is _MISSING:
            return _absent(name, nullable, value)
        # Parsers turn integers beyond 64 bits into floats: report those as
        # out of range rather than as a puzzling type error.
        if type(value) is float and value.is_integer() and not low <= value <= high:
            raise _out_of_range(name, expected)
        raise _wrong_type(name, expected, value)

    return convert


def _json_real(name: str, nullable: bool, column_type: ColumnType) -> Converter:
    limit, narrow = _real_bounds(column_type)
    expected = column_type.value

    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is float or kind is int:
            try:
                number = float(value)
            except OverflowError:
                raise _out_of_range(name, expected) from None
            # The comparison is false for NaN and infinities too.
            if -limit <= number <= limit:
                return narrow(number)
            raise _out_of_range(name, expected)
        if value is None or value is _MISSING:
            return _absent(name, nullable, value)
        raise _wrong_type(name, expected, value)

    return convert


def _json_boolean(name: str, nullable: bool) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is bool:
            return value
        if value is None or value is _MISSING:
            return _absent(name, nullable, value)
        raise _wrong_type(name, "boolean", value)

    return convert


def _json_timestamp(name: str, nullable: bool, column_type: ColumnType) -> Converter:
    millis = column_type is ColumnType.TIMESTAMP_MILLIS

    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return _parse_rfc3339(name, value, millis)
        if kind is int:
            return _from_epoch(name, value, millis)
        if value is None or value is _MISSING:
            return _absent(name, nullable, value)
        # Already-decoded values (fastavro) may come through here as well.
        if kind is datetime and value.tzinfo is not None:
            return _normalise(name, value, millis)
        if kind is datetime:  # naive: its instant is unknown
            raise _invalid_timestamp(name)
        raise _wrong_type(name, "timestamp", value)

    return convert


def _json_date(name: str, nullable: bool) -> Converter:
    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return _parse_date(name, value)
        if kind is int:
            return _from_days(name, value)
        if value is None or value is _MISSING:
            return _absent(name, nullable, value)
        if kind is date:
            return value
        raise _wrong_type(name, "date", value)

    return convert


def _json_converter(column: Column) -> Converter:
    name, column_type, nullable = column.name, column.type, column.nullable
    if column_type is ColumnType.STRING:
        return _json_string(name, nullable)
    if column_type in (ColumnType.INT, ColumnType.LONG):
        return _json_integer(name, nullable, column_type)
    if column_type in (ColumnType.FLOAT, ColumnType.DOUBLE):
        return _json_real(name, nullable, column_type)
    if column_type is ColumnType.BOOLEAN:
        return _json_boolean(name, nullable)
    if column_type in (ColumnType.TIMESTAMP_MILLIS, ColumnType.TIMESTAMP_MICROS):
        return _json_timestamp(name, nullable, column_type)
    return _json_date(name, nullable)


# --- Text (CSV) converters -------------------------------------------------------
# Every value is a string; "" means null except for string columns, where an
# empty string is a legitimate value.


def _text_string(name: str, nullable: bool) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is str:
            if "\x00" in value:
                raise _invalid_string(name)
            return value
        return _absent(name, nullable, value)

    return convert


def _text_integer(name: str, nullable: bool, column_type: ColumnType) -> Converter:
    low, high = _INT32 if column_type is ColumnType.INT else _INT64
    expected = column_type.value
    match = _TEXT_INTEGER.fullmatch

    def convert(value: Any) -> Any:
        if not value:
            return _absent(name, nullable, value)
        if match(value) is None:
            raise _wrong_text(name, expected)
        try:
            number = int(value)
        except ValueError:  # beyond the interpreter's digit limit: far out of range
            raise _out_of_range(name, expected) from None
        if low <= number <= high:
            return number
        raise _out_of_range(name, expected)

    return convert


def _text_real(name: str, nullable: bool, column_type: ColumnType) -> Converter:
    limit, narrow = _real_bounds(column_type)
    expected = column_type.value
    match = _TEXT_REAL.fullmatch

    def convert(value: Any) -> Any:
        if not value:
            return _absent(name, nullable, value)
        if match(value) is None:
            if value.lower().lstrip("+-") in _TEXT_NON_FINITE:
                raise _out_of_range(name, expected)
            raise _wrong_text(name, expected)
        number = float(value)
        if -limit <= number <= limit:
            return narrow(number)
        raise _out_of_range(name, expected)

    return convert


def _text_boolean(name: str, nullable: bool) -> Converter:
    lookup = _TEXT_BOOLEANS.get

    def convert(value: Any) -> Any:
        if not value:
            return _absent(name, nullable, value)
        result = lookup(value.lower())
        if result is None:
            raise _wrong_text(name, "boolean (true/false/1/0)")
        return result

    return convert


def _text_timestamp(name: str, nullable: bool, column_type: ColumnType) -> Converter:
    millis = column_type is ColumnType.TIMESTAMP_MILLIS
    epoch = _TEXT_EPOCH.fullmatch

    def convert(value: Any) -> Any:
        if not value:
            return _absent(name, nullable, value)
        if epoch(value) is not None:
            try:
                number = int(value)
            except ValueError:
                raise _out_of_range(name, "timestamp") from None
            return _from_epoch(name, number, millis)
        return _parse_rfc3339(name, value, millis)

    return convert


def _text_date(name: str, nullable: bool) -> Converter:
    epoch = _TEXT_EPOCH.fullmatch

    def convert(value: Any) -> Any:
        if not value:
            return _absent(name, nullable, value)
        if epoch(value) is not None:
            try:
                days = int(value)
            except ValueError:
                raise _out_of_range(name, "date") from None
            return _from_days(name, days)
        return _parse_date(name, value)

    return convert


def _text_converter(column: Column) -> Converter:
    name, column_type, nullable = column.name, column.type, column.nullable
    if column_type is ColumnType.STRING:
        return _text_string(name, nullable)
    if column_type in (ColumnType.INT, ColumnType.LONG):
        return _text_integer(name, nullable, column_type)
    if column_type in (ColumnType.FLOAT, ColumnType.DOUBLE):
        return _text_real(name, nullable, column_type)
    if column_type is ColumnType.BOOLEAN:
        return _text_boolean(name, nullable)
    if column_type in (ColumnType.TIMESTAMP_MILLIS, ColumnType.TIMESTAMP_MICROS):
        return _text_timestamp(name, nullable, column_type)
    return _text_date(name, nullable)


class RecordConverter:
    """Converts records for one target; build once per Target and reuse.

    Rows are tuples in column order holding what asyncpg expects for each
    column's pg_type: str, int, float, bool, UTC-aware datetime or date.
    """

    __slots__ = ("_json", "_names", "_name_set", "_missing", "_text", "target")

    def __init__(self, target: Target) -> None:
        self.target = target
        self._names = target.column_names
        self._name_set = frozenset(self._names)
        # One "absent" default per column, so dict.get can be mapped over names.
        self._missing = (_MISSING,) * len(self._names)
        self._json = tuple(_json_converter(column) for column in target.columns)
        self._text = tuple(_text_converter(column) for column in target.columns)

    @property
    def json_converters(self) -> tuple[Converter, ...]:
        """The per-column converters of from_json, in column order."""
        return self._json

    def from_json(self, raw: object) -> tuple[Any, ...]:
        """Convert one decoded JSON value (an object is expected) into a row."""
        if not isinstance(raw, dict):
            raise RecordInvalid("not_an_object", f"record is {_json_type(raw)}, not an object")
        if not raw.keys() <= self._name_set:
            raise self._unknown(raw)
        # map/call keep the per-column loop in C; only the converters run Python.
        return tuple(map(call, self._json, map(raw.get, self._names, self._missing)))

    def from_text(self, raw: Mapping[str, str | None]) -> tuple[Any, ...]:
        """Convert one CSV row (column name -> text) into a row."""
        if not raw.keys() <= self._name_set:
            raise self._unknown(raw)
        return tuple(map(call, self._text, map(raw.get, self._names, self._missing)))

    def _unknown(self, raw: Mapping[Any, Any]) -> RecordInvalid:
        # Client-chosen names: list a few, shortened, so a hostile record
        # cannot blow up the message.
        extra = [key for key in raw if key not in self._name_set]
        shown = ", ".join(
            repr(str(key)[:_MAX_NAME_CHARS]) for key in extra[:_MAX_NAMES_REPORTED]
        )
        more = len(extra) - _MAX_NAMES_REPORTED
        suffix = f" and {more} more" if more > 0 else ""
        return RecordInvalid(
            "unknown_field", f"unknown field(s) {shown}{suffix} for target {self.target.name!r}"
        )

