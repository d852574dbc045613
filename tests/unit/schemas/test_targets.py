"""Target schema loading: the built-in target, every supported type, every rejection."""

from __future__ import annotations

import copy
import io
import json
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from app.errors import SluiceError
from schemas.targets import (
    BUILTIN_TARGETS_DIR,
    Column,
    ColumnType,
    Target,
    TargetSchemaError,
    load_target,
    load_targets,
)


def _schema(**overrides: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "record",
        "name": "things",
        "sluice.key": ["id"],
        "fields": [{"name": "id", "type": "long"}, {"name": "label", "type": "string"}],
    }
    schema.update(overrides)
    return schema


def _write(directory: Path, schema: object, filename: str = "things.avsc") -> Path:
    path = directory / filename
    path.write_text(json.dumps(schema))
    return path


def test_builtin_sensor_readings() -> None:
    target = load_target(BUILTIN_TARGETS_DIR / "sensor_readings.avsc")
    assert target.name == "sensor_readings"
    assert target.columns == (
        Column("sensor_id", ColumnType.STRING, False),
        Column("value", ColumnType.DOUBLE, False),
        Column("sampled_at", ColumnType.TIMESTAMP_MILLIS, False),
    )
    assert target.key == ("sensor_id", "sampled_at")
    assert target.column_names == ("sensor_id", "value", "sampled_at")
    assert target.key_indexes == (0, 2)
    assert [c.pg_type for c in target.columns] == ["text", "double precision", "timestamptz"]


def test_builtin_directory_is_keyed_by_name() -> None:
    targets = load_targets(BUILTIN_TARGETS_DIR)
    assert "sensor_readings" in targets
    assert all(name == target.name for name, target in targets.items())


def test_avro_schema_decodes_producer_records_and_has_no_sluice_attributes() -> None:
    target = load_target(BUILTIN_TARGETS_DIR / "sensor_readings.avsc")
    assert "sluice.key" not in target.avro_schema
    record = {
        "sensor_id": "s-1",
        "value": 2.5,
        "sampled_at": datetime(2023, 10, 1, 12, 0, 0, 123000, tzinfo=UTC),
    }
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, target.avro_schema, record)
    buffer.seek(0)
    assert fastavro.schemaless_reader(buffer, target.avro_schema) == record


@pytest.mark.parametrize(
    ("column_type", "pg_type"),
    [
        (ColumnType.STRING, "text"),
        (ColumnType.INT, "integer"),
        (ColumnType.LONG, "bigint"),
        (ColumnType.FLOAT, "real"),
        (ColumnType.DOUBLE, "double precision"),
        (ColumnType.BOOLEAN, "boolean"),
        (ColumnType.TIMESTAMP_MILLIS, "timestamptz"),
        (ColumnType.TIMESTAMP_MICROS, "timestamptz"),
        (ColumnType.DATE, "date"),
    ],
)
def test_pg_type(column_type: ColumnType, pg_type: str) -> None:
    assert Column("c", column_type, nullable=True).pg_type == pg_type


def test_every_supported_type(tmp_path: Path) -> None:
    fields = [
        {"name": "id", "type": "long"},
        {"name": "s", "type": "string"},
        {"name": "i", "type": ["null", "int"]},
        {"name": "f", "type": ["float", "null"]},
        {"name": "d", "type": {"type": "double"}},
        {"name": "b", "type": "boolean"},
        {"name": "tm", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tu", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {"name": "dt", "type": {"type": "int", "logicalType": "date"}, "doc": "a day"},
    ]
    target = load_target(_write(tmp_path, _schema(fields=fields, doc="all types")))
    assert [(c.name, c.type, c.nullable) for c in target.columns] == [
        ("id", ColumnType.LONG, False),
        ("s", ColumnType.STRING, False),
        ("i", ColumnType.INT, True),
        ("f", ColumnType.FLOAT, True),
        ("d", ColumnType.DOUBLE, False),
        ("b", ColumnType.BOOLEAN, False),
        ("tm", ColumnType.TIMESTAMP_MILLIS, False),
        ("tu", ColumnType.TIMESTAMP_MICROS, True),
        ("dt", ColumnType.DATE, False),
    ]


def test_key_in_declared_order_not_column_order(tmp_path: Path) -> None:
    fields = [
        {"name": "a", "type": "string"},
        {"name": "b", "type": "long"},
        {"name": "c", "type": "string"},
    ]
    target = load_target(_write(tmp_path, _schema(fields=fields, **{"sluice.key": ["c", "a"]})))
    assert target.key == ("c", "a")
    assert target.key_indexes == (2, 0)
    assert target.key_of(("x", 1, "z")) == ("z", "x")


def test_single_column_key_of_is_a_tuple(tmp_path: Path) -> None:
    target = load_target(_write(tmp_path, _schema()))
    assert target.key_of((7, "label")) == (7,)


def test_longest_identifier_is_accepted(tmp_path: Path) -> None:
    name = "t" * 63
    assert load_target(_write(tmp_path, _schema(name=name))).name == name


def test_target_equality_and_hash_ignore_the_avro_dict(tmp_path: Path) -> None:
    first = load_target(_write(tmp_path, _schema(), "a.avsc"))
    second = load_target(_write(tmp_path, _schema(doc="other doc"), "b.avsc"))
    assert first == second
    assert hash(first) == hash(second)
    assert {first: 1}[second] == 1


def test_target_pickles_and_copies_after_its_caches_are_filled(tmp_path: Path) -> None:
    target = load_target(_write(tmp_path, _schema()))
    assert target.key_of((7, "x")) == (7,)  # fills the cache with a lambda
    for clone in (pickle.loads(pickle.dumps(target)), copy.deepcopy(target)):
        assert clone == target
        assert clone.avro_schema == target.avro_schema
        assert clone.key_of((8, "y")) == (8,)


def test_target_schema_error_is_a_sluice_error() -> None:
    assert issubclass(TargetSchemaError, SluiceError)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        (_schema(type="enum"), '"type": "record"'),
        (_schema(name="Things"), "record name"),
        (_schema(name="1things"), "record name"),
        (_schema(name="thing-s"), "record name"),
        (_schema(name="t" * 64), "record name"),
        (_schema(name=None), "record name"),
        (_schema(fields=[]), "non-empty fields"),
        (_schema(fields="id"), "non-empty fields"),
        (_schema(fields=["id"]), "must be an object"),
        (_schema(fields=[{"name": "Id", "type": "long"}]), "field name"),
        (_schema(fields=[{"name": "select;drop", "type": "long"}]), "field name"),
        (_schema(fields=[{"name": "id", "type": "long"}, {"name": "id", "type": "int"}]), "unique"),
        (_schema(**{"sluice.key": None}), "sluice.key"),
        (_schema(**{"sluice.key": []}), "sluice.key"),
        (_schema(**{"sluice.key": "id"}), "sluice.key"),
        (_schema(**{"sluice.key": [1]}), "sluice.key"),
        (_schema(**{"sluice.key": ["id", "id"]}), "twice"),
        (_schema(**{"sluice.key": ["nope"]}), "not a field"),
        (
            _schema(fields=[{"name": "id", "type": ["null", "long"]}]),
            "must not be nullable",
        ),
    ],
)
def test_invalid_schema(tmp_path: Path, schema: object, reason: str) -> None:
    path = _write(tmp_path, schema)
    with pytest.raises(TargetSchemaError) as caught:
        load_target(path)
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "avro_type",
    [
        "bytes",
        "null",
        "strin",
        {"type": "array", "items": "long"},
        {"type": "map", "values": "long"},
        {"type": "enum", "name": "e", "symbols": ["A"]},
        {"type": "fixed", "name": "f", "size": 4},
        {"type": "record", "name": "r", "fields": [{"name": "x", "type": "long"}]},
        {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
        {"type": "string", "logicalType": "uuid"},
        {"type": "long", "logicalType": "local-timestamp-millis"},
        {"type": "int", "logicalType": "timestamp-millis"},
        {"type": "long", "logicalType": "date"},
        ["null", "string", "long"],
        ["string", "long"],
        ["null"],
        ["null", "null"],
        ["null", ["null", "long"]],
    ],
)
def test_unsupported_types(tmp_path: Path, avro_type: object) -> None:
    fields = [{"name": "id", "type": "long"}, {"name": "odd", "type": avro_type}]
    path = _write(tmp_path, _schema(fields=fields))
    with pytest.raises(TargetSchemaError, match="odd"):
        load_target(path)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.avsc"
    path.write_text('{"type": "record",')
    with pytest.raises(TargetSchemaError, match="not valid JSON"):
        load_target(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TargetSchemaError, match="cannot read"):
        load_target(tmp_path / "absent.avsc")


def test_fastavro_rejection_is_reported(tmp_path: Path) -> None:
    # Valid by our own rules, but the default does not match the field's type.
    fields = [{"name": "id", "type": "long"}, {"name": "n", "type": "long", "default": "x"}]
    path = _write(tmp_path, _schema(fields=fields))
    with pytest.raises(TargetSchemaError, match="fastavro rejects") as caught:
        load_target(path)
    assert str(path) in str(caught.value)


def test_load_targets_reads_every_avsc_and_ignores_other_files(tmp_path: Path) -> None:
    _write(tmp_path, _schema(name="alpha"), "alpha.avsc")
    _write(tmp_path, _schema(name="beta"), "beta.avsc")
    (tmp_path / "notes.txt").write_text("not a schema")
    assert sorted(load_targets(tmp_path)) == ["alpha", "beta"]


def test_load_targets_rejects_two_files_for_one_table(tmp_path: Path) -> None:
    _write(tmp_path, _schema(name="alpha"), "a.avsc")
    _write(tmp_path, _schema(name="alpha"), "b.avsc")
    with pytest.raises(TargetSchemaError, match="already defined"):
        load_targets(tmp_path)


def test_load_targets_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(TargetSchemaError, match="not a directory"):
        load_targets(tmp_path / "missing")


def test_load_targets_empty_directory(tmp_path: Path) -> None:
    assert load_targets(tmp_path) == {}


def test_target_built_directly_matches_loaded(tmp_path: Path) -> None:
    loaded = load_target(_write(tmp_path, _schema()))
    built = Target(
        name="things",
        columns=(Column("id", ColumnType.LONG, False), Column("label", ColumnType.STRING, False)),
        key=("id",),
        avro_schema={},
    )
    assert built == loaded
