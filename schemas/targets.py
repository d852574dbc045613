"""Targets: destination tables described by Avro record schemas in ``*.avsc`` files."""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Any, Final

import fastavro
import orjson

from app.errors import SluiceError

__all__ = [
    "BUILTIN_TARGETS_DIR",
    "KEY_ATTRIBUTE",
    "RESERVED_TABLE_PREFIXES",
    "Column",
    "ColumnType",
    "Target",
    "TargetSchemaError",
    "load_target",
    "load_targets",
]

BUILTIN_TARGETS_DIR: Final[Path] = Path(__file__).parent / "targets"

# The custom top-level attribute naming the conflict-key columns.
KEY_ATTRIBUTE: Final = "sluice.key"

# Names become unquoted SQL identifiers, so keep them to what PostgreSQL accepts
# without quoting and within its 63-byte identifier limit.
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class ColumnType(enum.StrEnum):
    """The Avro types a target column may have; values are the Avro spelling."""

    STRING = "string"
    INT = "int"
    LONG = "long"
    FLOAT = "float"
    DOUBLE = "double"
    BOOLEAN = "boolean"
    TIMESTAMP_MILLIS = "timestamp-millis"
    TIMESTAMP_MICROS = "timestamp-micros"
    DATE = "date"


_PG_TYPES: Final[dict[ColumnType, str]] = {
    ColumnType.STRING: "text",
    ColumnType.INT: "integer",
    ColumnType.LONG: "bigint",
    ColumnType.FLOAT: "real",
    ColumnType.DOUBLE: "double precision",
    ColumnType.BOOLEAN: "boolean",
    ColumnType.TIMESTAMP_MILLIS: "timestamptz",
    ColumnType.TIMESTAMP_MICROS: "timestamptz",
    ColumnType.DATE: "date",
}

_PRIMITIVES: Final[dict[str, ColumnType]] = {
    "string": ColumnType.STRING,
    "int": ColumnType.INT,
    "long": ColumnType.LONG,
    "float": ColumnType.FLOAT,
    "double": ColumnType.DOUBLE,
    "boolean": ColumnType.BOOLEAN,
}

# Only logical types whose decoded Python value we convert; anything else (uuid,
# decimal, local-timestamp-*) would reach the pipeline as an unexpected object.
_LOGICAL: Final[dict[tuple[str, str], ColumnType]] = {
    ("long", "timestamp-millis"): ColumnType.TIMESTAMP_MILLIS,
    ("long", "timestamp-micros"): ColumnType.TIMESTAMP_MICROS,
    ("int", "date"): ColumnType.DATE,
}


RESERVED_PREFIX: Final = "_sluice"
"""Column names Sluice keeps for itself (the tenant column, staging's position column)."""

RESERVED_TABLE_PREFIXES: Final = ("sluice_", "_sluice", "pg_")
"""Target (table) names Sluice refuses: ``sluice_*`` are its own tables, their indexes and
the outcome ledger's day partitions, ``_sluice*`` its staging tables, and ``pg_*`` are
PostgreSQL's catalogs, which ``pg_catalog`` (searched first) would answer in a target's place.
A target with such a name would write into, or read from, something that is not its table."""


class TargetSchemaError(SluiceError):
    """A target schema file is unreadable or describes something Sluice cannot store."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a target table, in declared order."""

    name: str
    type: ColumnType
    nullable: bool

    @property
    def pg_type(self) -> str:
        """The PostgreSQL type the column is created with."""
        return _PG_TYPES[self.type]


@dataclass(frozen=True)
class Target:
    """A destination table: its columns, conflict key and Avro schema.

    Not slotted so the cached properties below can memoise into ``__dict__``.
    """

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    # Excluded from eq/hash: it is derived from the fields above and is a dict.
    avro_schema: dict[str, Any] = field(compare=False, repr=False)
    """As fastavro parsed it, for the codecs."""
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The schema as its file holds it (``sluice.key`` included), for clients."""

    def __getstate__(self) -> dict[str, Any]:
        # The cached properties may hold lambdas, which do not pickle; they are
        # cheap to rebuild, so only the fields travel.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @cached_property
    def column_names(self) -> tuple[str, ...]:
        """Column names in declared order (the row tuple order)."""
        return tuple(column.name for column in self.columns)

    @cached_property
    def key_indexes(self) -> tuple[int, ...]:
        """Positions of the key columns in a row tuple, in key order."""
        names = self.column_names
        return tuple(names.index(name) for name in self.key)

    @cached_property
    def key_of(self) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """A function extracting the key values of a row, always as a tuple."""
        indexes = self.key_indexes
        if len(indexes) == 1:
            (only,) = indexes
            return lambda row: (row[only],)
        # itemgetter with several indexes already returns a tuple, in C.
        return itemgetter(*indexes)


def _column_type(avro_type: object) -> ColumnType | None:
    if isinstance(avro_type, str):
        return _PRIMITIVES.get(avro_type)
    if isinstance(avro_type, dict):
        base = avro_type.get("type")
        logical = avro_type.get("logicalType")
        if not isinstance(base, str):
            return None
        if logical is None:
            return _PRIMITIVES.get(base)
        if isinstance(logical, str):
            return _LOGICAL.get((base, logical))
    return None


def _identifier(where: str, what: str, name: object) -> str:
    """A table or column name, which becomes an SQL identifier: checked, never trusted."""
    if not isinstance(name, str) or _IDENTIFIER.fullmatch(name) is None:
        raise TargetSchemaError(f"{where}: {what} {name!r} must match {_IDENTIFIER.pattern}")
    return name


def _column(where: str, spec: object) -> Column:
    if not isinstance(spec, dict):
        raise TargetSchemaError(f"{where}: every field must be an object")
    name = _identifier(where, "field name", spec.get("name"))
    if name.startswith(RESERVED_PREFIX):
        raise TargetSchemaError(f"{where}: field {name!r}: names starting with {RESERVED_PREFIX!r} "
                                "are Sluice's own columns")
    avro_type = spec.get("type")
    nullable = False
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        if len(avro_type) != 2 or len(branches) != 1:
            raise TargetSchemaError(
                f'{where}: field {name!r}: only ["null", T] unions are supported'
            )
        avro_type = branches[0]
        nullable = True
    column_type = _column_type(avro_type)
    if column_type is None:
        raise TargetSchemaError(
            f"{where}: field {name!r}: unsupported Avro type {orjson.dumps(avro_type).decode()}"
        )
    return Column(name, column_type, nullable)


def _parse(where: str, document: object) -> Target:
    if not isinstance(document, dict):
        raise TargetSchemaError(f"{where}: the schema must be a JSON object")
    if document.get("type") != "record":
        raise TargetSchemaError(f'{where}: the schema must have "type": "record"')
    name = _identifier(where, "record name", document.get("name"))
    if name.startswith(RESERVED_TABLE_PREFIXES):
        raise TargetSchemaError(
            f"{where}: target {name!r} is a reserved name: names starting with "
            f"{', '.join(repr(p) for p in RESERVED_TABLE_PREFIXES)} belong to Sluice or PostgreSQL")
    fields = document.get("fields")
    if not isinstance(fields, list) or not fields:
        raise TargetSchemaError(f"{where}: the record needs a non-empty fields list")
    columns = tuple(_column(where, spec) for spec in fields)
    by_name = {column.name: column for column in columns}
    if len(by_name) != len(columns):
        raise TargetSchemaError(f"{where}: field names must be unique")

    key = document.get(KEY_ATTRIBUTE)
    if not isinstance(key, list) or not key or not all(isinstance(k, str) for k in key):
        raise TargetSchemaError(
            f'{where}: "{KEY_ATTRIBUTE}" must be a non-empty list of field names'
        )
    if len(set(key)) != len(key):
        raise TargetSchemaError(f'{where}: "{KEY_ATTRIBUTE}" names a field twice')
    for key_name in key:
        column = by_name.get(key_name)
        if column is None:
            raise TargetSchemaError(
                f'{where}: "{KEY_ATTRIBUTE}" names {key_name!r}, which is not a field'
            )
        if column.nullable:
            # NULLs never conflict in a unique index, so a nullable key would
            # silently insert duplicates instead of upserting.
            raise TargetSchemaError(
                f'{where}: "{KEY_ATTRIBUTE}" field {key_name!r} must not be nullable'
            )

    # Our attributes are not Avro: keep the schema handed to fastavro pure Avro.
    avro_document = {k: v for k, v in document.items() if not k.startswith("sluice.")}
    try:
        avro_schema = fastavro.parse_schema(avro_document)
    except Exception as exc:  # fastavro raises several unrelated exception types
        raise TargetSchemaError(f"{where}: fastavro rejects the schema: {exc}") from exc
    if not isinstance(avro_schema, dict):  # a record schema always parses to a dict
        raise TargetSchemaError(f"{where}: fastavro did not parse a record schema")
    return Target(name=name, columns=columns, key=tuple(key), avro_schema=avro_schema,
                  document=copy.deepcopy(document))


def load_target(path: Path) -> Target:
    """Read and validate one ``.avsc`` file; errors name the file and the reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TargetSchemaError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TargetSchemaError(f"{path}: not valid JSON: {exc}") from exc
    return _parse(str(path), document)


def load_targets(directory: Path) -> dict[str, Target]:
    """Load every ``*.avsc`` in ``directory``, keyed by record (table) name."""
    if not directory.is_dir():
        raise TargetSchemaError(f"{directory}: not a directory")
    targets: dict[str, Target] = {}
    origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.avsc")):
        target = load_target(path)
        if target.name in targets:
            raise TargetSchemaError(
                f"{path}: target {target.name!r} is already defined by {origin[target.name]}"
            )
        targets[target.name] = target
        origin[target.name] = path
    return targets
