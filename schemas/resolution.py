"""Whether records written under a writer's Avro schema can be read as a target's records.

Avro resolves a writer's schema against a reader's record by record, so a mismatch would
surface at the first record that hits it, after others were taken. Checked once against
the target's columns instead, by the rules of the Avro specification ("Schema
Resolution") as fastavro applies them, a file is refused before its first record: the
record names match, every target field is written or has a default, and every type the
writer may write is the target's or promotes to it (int to long, float or double; long to
float or double; float to double; string and bytes to each other). A writer field the
target lacks is skipped. A writer union that includes null only fits a nullable column:
one null would otherwise stop the file in the middle.

Messages name the target's fields and Avro type names only, never a name the writer chose.
"""

from __future__ import annotations

from typing import Any, Final

from app.errors import SluiceError
from schemas.targets import Target

__all__ = ["SchemaMismatch", "check_resolvable"]

_PROMOTIONS: Final[dict[str, frozenset[str]]] = {
    "null": frozenset({"null"}),
    "boolean": frozenset({"boolean"}),
    "int": frozenset({"int", "long", "float", "double"}),
    "long": frozenset({"long", "float", "double"}),
    "float": frozenset({"float", "double"}),
    "double": frozenset({"double"}),
    "string": frozenset({"string", "bytes"}),
    "bytes": frozenset({"bytes", "string"}),
}
"""Each primitive writer type, and the reader types it can be read as."""
_COMPLEX: Final = frozenset({"record", "enum", "array", "map", "fixed"})


class SchemaMismatch(SluiceError):
    """The writer's records cannot be read as the target's; the message says where."""


def _base(avro_type: Any) -> str:
    """The Avro type a (parsed) schema denotes, logical types set aside; "named" for a
    reference to a named type."""
    if isinstance(avro_type, dict):
        avro_type = avro_type.get("type")
    if isinstance(avro_type, str) and (avro_type in _PROMOTIONS or avro_type in _COMPLEX):
        return avro_type
    return "union" if isinstance(avro_type, list) else "named"


def _unqualified(name: object) -> str:
    return str(name).rsplit(".", 1)[-1]


def check_resolvable(writer: Any, target: Target) -> None:
    """Raise SchemaMismatch unless every record ``writer`` (a parsed schema) can describe
    reads as a record of ``target``."""
    if _base(writer) != "record":
        raise SchemaMismatch(f"the file's schema is {_base(writer)}, not a record")
    reader = target.avro_schema
    names = {_unqualified(reader["name"])} | {_unqualified(a) for a in reader.get("aliases", ())}
    if _unqualified(writer.get("name")) not in names:
        raise SchemaMismatch(f"the file's record is not named {target.name!r}, as the target is")
    written = {field["name"]: field["type"] for field in writer.get("fields", ())}
    for field in reader["fields"]:
        name = field["name"]
        spelled = [name, *field.get("aliases", ())]
        found = next((written[n] for n in spelled if n in written), None)
        if found is None:
            if "default" not in field:
                raise SchemaMismatch(
                    f"field {name!r}: not in the file's schema, and the target gives it no default")
            continue
        reader_type = field["type"]
        nullable = isinstance(reader_type, list)
        wanted = _base(next(t for t in reader_type if t != "null") if nullable else reader_type)
        for branch in found if isinstance(found, list) else [found]:
            kind = _base(branch)
            if kind == "null":
                if not nullable:
                    raise SchemaMismatch(
                        f"field {name!r}: the file's schema allows null, the target does not")
            elif wanted not in _PROMOTIONS.get(kind, ()):
                raise SchemaMismatch(f"field {name!r}: the file writes {kind}, which cannot be "
                                     f"read as the target's {wanted}")
