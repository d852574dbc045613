"""schemas.protobuf: the .proto text and the runtime message class agree, field for field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf.descriptor import FieldDescriptor

from schemas.protobuf import file_descriptor, message_class, message_name, proto_text
from schemas.targets import Target, load_target

_FIELD_LINE = re.compile(r"^  (optional )?([\w.]+) (\w+) = (\d+);$")
_TYPE_NAMES = {
    FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_DOUBLE: "double", FieldDescriptor.TYPE_BOOL: "bool",
}

EVERY_TYPE: list[dict[str, Any]] = [
    {"name": "id", "type": "string", "doc": "The key.\nTwo lines of it."},
    {"name": "small", "type": "int"},
    {"name": "big", "type": ["null", "long"]},
    {"name": "ratio", "type": "float"},
    {"name": "amount", "type": ["null", "double"]},
    {"name": "flag", "type": "boolean"},
    {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "at_us", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
    {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
    {"name": "label", "type": ["null", "string"]},
]


def make_target(tmp_path: Path, fields: list[dict[str, Any]], name: str = "every_type") -> Target:
    path = tmp_path / f"{name}.avsc"
    path.write_bytes(orjson.dumps({"type": "record", "name": name, "doc": "All the types.",
                                   "sluice.key": ["id"], "fields": fields}))
    return load_target(path)


def _text_fields(text: str) -> list[tuple[str, str, int, bool]]:
    """(type, name, number, optional) of every field line of a .proto text."""
    fields = []
    for line in text.splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            fields.append((match[2], match[3], int(match[4]), bool(match[1])))
    return fields


def _runtime_fields(target: Target) -> list[tuple[str, str, int, bool]]:
    """The same, read off the runtime class's descriptor."""
    fields = []
    for field in message_class(target).DESCRIPTOR.fields:
        type_name = (field.message_type.full_name if field.type == FieldDescriptor.TYPE_MESSAGE
                     else _TYPE_NAMES[field.type])
        synthetic = field.containing_oneof is not None and field.containing_oneof.name == f"_{field.name}"
        fields.append((type_name, field.name, field.number, synthetic))
    return fields


def test_sensor_readings_proto(targets: dict[str, Target]) -> None:
    text = proto_text(targets["sensor_readings"])
    assert 'syntax = "proto3";' in text
    assert "package sluice.targets;" in text
    assert 'import "google/protobuf/timestamp.proto";' in text
    assert "message SensorReadings {" in text
    assert "  // Identifier the sensor reports itself as.\n  string sensor_id = 1;" in text
    assert _text_fields(text) == [("string", "sensor_id", 1, False), ("double", "value", 2, False),
                                  ("google.protobuf.Timestamp", "sampled_at", 3, False)]


def test_text_and_runtime_descriptor_agree(tmp_path: Path, targets: dict[str, Target]) -> None:
    for target in (make_target(tmp_path, EVERY_TYPE), targets["sensor_readings"]):
        text_fields = _text_fields(proto_text(target))
        assert text_fields == _runtime_fields(target)
        assert len(text_fields) == len(target.columns)
        descriptor = message_class(target).DESCRIPTOR
        assert descriptor.full_name == f"sluice.targets.{message_name(target)}"
        assert descriptor.file.package == "sluice.targets"


def test_every_column_type_is_mapped(tmp_path: Path) -> None:
    target = make_target(tmp_path, EVERY_TYPE)
    text = proto_text(target)
    assert _text_fields(text) == [
        ("string", "id", 1, False), ("int32", "small", 2, False), ("int64", "big", 3, True),
        ("float", "ratio", 4, False), ("double", "amount", 5, True), ("bool", "flag", 6, False),
        ("google.protobuf.Timestamp", "at_ms", 7, False),
        ("google.protobuf.Timestamp", "at_us", 8, True), ("int32", "day", 9, True),
        ("string", "label", 10, True),
    ]
    assert "  // The key.\n  // Two lines of it.\n  string id = 1;" in text
    assert "// Days since 1970-01-01.\n  optional int32 day = 9;" in text
    assert "// All the types.\nmessage EveryType {" in text


def test_optional_fields_tell_null_from_zero(tmp_path: Path) -> None:
    cls = message_class(make_target(tmp_path, EVERY_TYPE))
    parsed = cls.FromString(cls(big=0).SerializeToString())
    assert parsed.HasField("big") and parsed.big == 0
    assert not cls.FromString(b"").HasField("big")
    with pytest.raises(ValueError):
        parsed.HasField("small")  # a required scalar has no presence: 0 is its value


def test_numbers_stay_when_a_field_is_appended(tmp_path: Path) -> None:
    before = _text_fields(proto_text(make_target(tmp_path, EVERY_TYPE)))
    after = _text_fields(proto_text(make_target(tmp_path, [*EVERY_TYPE, {"name": "extra", "type": "int"}])))
    assert after[:len(before)] == before
    assert after[-1] == ("int32", "extra", 11, False)


def test_no_timestamp_no_import(tmp_path: Path) -> None:
    target = make_target(tmp_path, [{"name": "id", "type": "string"}], name="_plain_things")
    assert "import" not in proto_text(target)
    assert not file_descriptor(target).dependency
    assert message_name(target) == "PlainThings"
