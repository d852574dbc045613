"""JSON records decoded and validated in compiled code, for the records that are valid.

Per-record validation in Python was most of the web process's time. For each target a
msgspec Struct is generated from its columns: decoding a JSON line into it parses and
checks every field in C (types, int32/int64 ranges, required fields, no unknown field).
Only the columns whose values need more than a type check (text for NUL, float32
narrowing, timestamps and dates) then pass through the same converters as the exact
path in ``schemas.validation``.

It answers for valid records only. A record it does not accept gets ``None``, and the
caller takes the exact path, which says what is wrong with the same code and message
as always: the compiled path only ever makes a valid record cheaper.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from schemas.targets import ColumnType, Target
from schemas.validation import RecordConverter, RecordInvalid

_INT32 = msgspec.Meta(ge=-(2**31), le=2**31 - 1)
_INT64 = msgspec.Meta(ge=-(2**63), le=2**63 - 1)

_DECODED: dict[ColumnType, Any] = {
    ColumnType.STRING: str,
    ColumnType.INT: Annotated[int, _INT32],
    ColumnType.LONG: Annotated[int, _INT64],
    ColumnType.FLOAT: float,
    ColumnType.DOUBLE: float,
    ColumnType.BOOLEAN: bool,
    ColumnType.TIMESTAMP_MILLIS: int | str,
    ColumnType.TIMESTAMP_MICROS: int | str,
    ColumnType.DATE: int | str,
}
"""What msgspec decodes each column type into; the converters below finish the job."""
_FINISHED = frozenset({ColumnType.STRING, ColumnType.FLOAT, ColumnType.TIMESTAMP_MILLIS,
                       ColumnType.TIMESTAMP_MICROS, ColumnType.DATE})
"""Column types whose decoded value goes through its exact converter as well."""


class TypedJsonDecoder:
    """Decodes one JSON record (bytes) of a target into a row, or None (see module docstring)."""

    __slots__ = ("_decode", "_astuple", "_finish")

    def __init__(self, target: Target, converter: RecordConverter) -> None:
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for n, column in enumerate(target.columns):
            decoded = _DECODED[column.type]
            # Attributes f0, f1, ... renamed to the column names: a column may be named
            # like a keyword, which an attribute cannot.
            if column.nullable:
                fields.append((f"f{n}", decoded | None, None))
            else:
                fields.append((f"f{n}", decoded))
        struct = msgspec.defstruct(
            "Record", fields, forbid_unknown_fields=True,
            rename={f"f{n}": column.name for n, column in enumerate(target.columns)})
        self._decode = msgspec.json.Decoder(struct).decode
        self._astuple = msgspec.structs.astuple
        converters = converter.json_converters
        self._finish = tuple((n, converters[n]) for n, column in enumerate(target.columns)
                             if column.type in _FINISHED)

    def decode(self, line: bytes) -> tuple[Any, ...] | None:
        """The converted row of a valid record; None for anything else."""
        try:
            values = self._astuple(self._decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if not self._finish:
            return values
        row = list(values)
        try:
            for n, convert in self._finish:
                if row[n] is not None:
                    row[n] = convert(row[n])
        except RecordInvalid:
            return None
        return tuple(row)
