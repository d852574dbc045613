"""A target as Protobuf: the ``.proto`` text clients compile, and the message class the ingress
parses with, both from one mapping of column types so that they cannot disagree.

Fields are numbered by their order in the target's Avro schema, from 1. A target's fields
are only ever appended (a reordered or removed field would change its table too), so a
number, once given, keeps its meaning: messages built from an older ``.proto`` still parse.
A nullable column is a proto3 ``optional`` field, so that null (unset) is told apart from
zero or the empty string. There is no protoc here: the descriptor is built field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message

from schemas.targets import ColumnType, Target

__all__ = [
    "PACKAGE",
    "ProtoField",
    "file_descriptor",
    "message_class",
    "message_name",
    "proto_fields",
    "proto_text",
]

PACKAGE: Final = "sluice.targets"
TIMESTAMP_FILE: Final = "google/protobuf/timestamp.proto"
TIMESTAMP_TYPE: Final = "google.protobuf.Timestamp"

_TYPES: Final[dict[ColumnType, tuple[str, int]]] = {
    ColumnType.STRING: ("string", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ColumnType.INT: ("int32", descriptor_pb2.FieldDescriptorProto.TYPE_INT32),
    ColumnType.LONG: ("int64", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ColumnType.FLOAT: ("float", descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT),
    ColumnType.DOUBLE: ("double", descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
    ColumnType.BOOLEAN: ("bool", descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
    ColumnType.TIMESTAMP_MILLIS: (TIMESTAMP_TYPE, descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE),
    ColumnType.TIMESTAMP_MICROS: (TIMESTAMP_TYPE, descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE),
    # Avro's own representation of a date: days since 1970-01-01 (google.type.Date is not
    # part of the protobuf package, and clients would need its .proto too).
    ColumnType.DATE: ("int32", descriptor_pb2.FieldDescriptorProto.TYPE_INT32),
}
"""Each column type as a proto3 type: its spelling in a .proto and its descriptor type."""

_UNIT_NOTES: Final[dict[ColumnType, str]] = {
    ColumnType.DATE: "Days since 1970-01-01.",
    ColumnType.TIMESTAMP_MILLIS: "Stored to the millisecond; finer digits are dropped.",
}
"""What a field's proto type does not say by itself, added to its comment."""


@dataclass(frozen=True, slots=True)
class ProtoField:
    """One column as a Protobuf field."""

    name: str
    number: int
    column_type: ColumnType
    optional: bool
    doc: str | None

    @property
    def type_name(self) -> str:
        """The field's type as a .proto spells it."""
        return _TYPES[self.column_type][0]

    @property
    def is_timestamp(self) -> bool:
        """Whether the field is a google.protobuf.Timestamp message."""
        return self.type_name == TIMESTAMP_TYPE


def message_name(target: Target) -> str:
    """The target's name in PascalCase: ``sensor_readings`` is ``SensorReadings``."""
    name = "".join(part[:1].upper() + part[1:] for part in target.name.split("_"))
    # Table names may start with "_" or be all underscores; a message name needs a letter first.
    return name if name[:1].isalpha() else f"T{name}"


def proto_fields(target: Target) -> tuple[ProtoField, ...]:
    """The target's columns as fields, numbered by their order in the schema."""
    docs = {spec.get("name"): spec.get("doc") for spec in target.document.get("fields", ())
            if isinstance(spec, dict)}
    return tuple(
        ProtoField(column.name, number, column.type, column.nullable,
                   doc if isinstance(doc := docs.get(column.name), str) else None)
        for number, column in enumerate(target.columns, start=1)
    )


def _comment(text: str | None, indent: str) -> list[str]:
    return [f"{indent}// {line}".rstrip() for line in (text or "").splitlines()]


def proto_text(target: Target) -> str:
    """The ``.proto`` (proto3) file describing one record of ``target``."""
    fields = proto_fields(target)
    lines = [
        f"// The records of the Sluice target {target.name}, as Protobuf messages.",
        "// Send them as application/x-protobuf with ?target=" + target.name + ", each message",
        "// preceded by its length as a varint (writeDelimitedTo, parseDelimitedFrom, protodelim).",
        "// Field numbers follow the order of the target's fields, which are only ever",
        "// appended: a number keeps its meaning, and messages from an older copy still parse.",
        "",
        'syntax = "proto3";',
        "",
        f"package {PACKAGE};",
        "",
    ]
    if any(field.is_timestamp for field in fields):
        lines += [f'import "{TIMESTAMP_FILE}";', ""]
    lines += _comment(target.document.get("doc") if isinstance(target.document.get("doc"), str)
                      else None, "")
    lines.append(f"message {message_name(target)} {{")
    for field in fields:
        lines += _comment(field.doc, "  ")
        lines += _comment(_UNIT_NOTES.get(field.column_type), "  ")
        label = "optional " if field.optional else ""
        lines.append(f"  {label}{field.type_name} {field.name} = {field.number};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def file_descriptor(target: Target) -> descriptor_pb2.FileDescriptorProto:
    """The descriptor of the file ``proto_text`` renders, built without parsing it."""
    fields = proto_fields(target)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"sluice/targets/{target.name}.proto", package=PACKAGE, syntax="proto3")
    if any(field.is_timestamp for field in fields):
        file.dependency.append(TIMESTAMP_FILE)
    message = file.message_type.add(name=message_name(target))
    for field in fields:
        spec = message.field.add(name=field.name, number=field.number,
                                 type=_TYPES[field.column_type][1],
                                 label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        if field.is_timestamp:
            spec.type_name = "." + TIMESTAMP_TYPE
        if field.optional:
            # proto3 `optional` is a one-field oneof the compiler names "_<field>".
            spec.proto3_optional = True
            spec.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{field.name}")
    return file


@cache
def message_class(target: Target) -> type[Message]:
    """The runtime class of ``target``'s message, in a pool of its own (cached per target).

    A pool per target: two targets, or one target loaded twice with other columns, never
    clash over a file or message name.
    """
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    pool.Add(file_descriptor(target))
    descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.{message_name(target)}")
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls
