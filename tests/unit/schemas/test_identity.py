"""Keys, partitions and record hashes: stable, source-independent, and pinned."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from app.errors import SluiceError
from schemas.identity import (
    KEY_ENCODING,
    PartitionCountError,
    key_json,
    partition_for,
    record_hash,
    record_key,
)
from schemas.targets import BUILTIN_TARGETS_DIR, Column, ColumnType, Target, load_target
from schemas.validation import RecordConverter

SENSOR = load_target(BUILTIN_TARGETS_DIR / "sensor_readings.avsc")
NOON = datetime(2023, 10, 1, 12, tzinfo=UTC)
ROW = ("s-1", 2.5, NOON)

# Key declared in a different order from the columns, with a date in it.
EVENTS = Target(
    name="events",
    columns=(
        Column("day", ColumnType.DATE, False),
        Column("payload", ColumnType.STRING, True),
        Column("source", ColumnType.STRING, False),
        Column("seq", ColumnType.LONG, False),
    ),
    key=("source", "seq", "day"),
    avro_schema={},
)


def test_record_key_follows_key_order() -> None:
    assert record_key(SENSOR, ROW) == ("s-1", NOON)
    assert record_key(EVENTS, (date(2023, 1, 2), None, "web", 7)) == ("web", 7, date(2023, 1, 2))


def test_key_json_is_compact_ordered_and_utc_z() -> None:
    assert key_json(SENSOR, ROW) == '{"sensor_id":"s-1","sampled_at":"2023-10-01T12:00:00Z"}'
    row = ("s-1", 2.5, NOON.replace(microsecond=123000))
    assert key_json(SENSOR, row) == (
        '{"sensor_id":"s-1","sampled_at":"2023-10-01T12:00:00.123000Z"}'
    )
    assert key_json(EVENTS, (date(2023, 1, 2), "x", "web", 7)) == (
        '{"source":"web","seq":7,"day":"2023-01-02"}'
    )


def test_key_json_escapes_text() -> None:
    row = ('quote " and \\ and \n', 1.0, NOON)
    decoded = orjson.loads(key_json(SENSOR, row))
    assert decoded == {"sensor_id": 'quote " and \\ and \n', "sampled_at": "2023-10-01T12:00:00Z"}


def test_partition_and_hash_are_pinned() -> None:
    # Changing these moves keys to other partitions and breaks 24 h duplicate
    # detection across a deploy: only change them together with KEY_ENCODING.
    assert KEY_ENCODING == "orjson-utc-z/1"
    assert partition_for("sensor_readings", ("s-1", NOON), 12) == 6
    assert partition_for("sensor_readings", ("s-1", NOON), 1000003) == 7548
    assert record_hash("sensor_readings", "insert", ROW).hex() == (
        "935434568eade3b52e1f7bf8f878e550"
    )


def test_partition_is_stable_across_interpreters(tmp_path: Path) -> None:
    code = (
        "from datetime import datetime, UTC\n"
        "from schemas.identity import partition_for, record_hash\n"
        "t = datetime(2023, 10, 1, 12, tzinfo=UTC)\n"
        "print(partition_for('sensor_readings', ('s-1', t), 1000003))\n"
        "print(record_hash('sensor_readings', 'insert', ('s-1', 2.5, t)).hex())\n"
    )
    root = Path(__file__).resolve().parents[3]
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(root))
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout)
    assert outputs == {"7548\n935434568eade3b52e1f7bf8f878e550\n"}


@pytest.mark.parametrize("partitions", [1, 2, 7, 12, 64])
def test_partition_in_range(partitions: int) -> None:
    seen = {partition_for("t", (f"k{n}",), partitions) for n in range(500)}
    assert seen <= set(range(partitions))
    if partitions <= 12:
        assert seen == set(range(partitions))  # 500 keys reach every partition


def test_partitions_spread_evenly() -> None:
    counts = Counter(partition_for("t", (n, "x"), 8) for n in range(8000))
    assert min(counts.values()) > 800  # 1000 expected per partition


def test_partition_depends_on_target_and_key() -> None:
    base = partition_for("a", ("k",), 1_000_003)
    assert partition_for("b", ("k",), 1_000_003) != base
    assert partition_for("a", ("k2",), 1_000_003) != base
    assert partition_for("a", ["k"], 1_000_003) == base  # list or tuple alike


@pytest.mark.parametrize("partitions", [0, -1])
def test_partition_count_must_be_positive(partitions: int) -> None:
    with pytest.raises(PartitionCountError):
        partition_for("t", ("k",), partitions)
    assert issubclass(PartitionCountError, SluiceError)


def test_record_hash_is_16_bytes_and_content_addressed() -> None:
    digest = record_hash("sensor_readings", "insert", ROW)
    assert isinstance(digest, bytes)
    assert len(digest) == 16
    assert record_hash("sensor_readings", "insert", tuple(ROW)) == digest
    others = {
        record_hash("sensor_readings", "upsert", ROW),
        record_hash("other", "insert", ROW),
        record_hash("sensor_readings", "insert", ("s-1", 2.6, NOON)),
        record_hash("sensor_readings", "insert", ("s-2", 2.5, NOON)),
        record_hash("sensor_readings", "insert", ("s-1", 2.5, NOON.replace(microsecond=1000))),
        record_hash("sensor_readings", "insert", ("s-1", None, NOON)),
    }
    assert digest not in others
    assert len(others) == 6


def _from_every_source(json_record: dict[str, Any], text_record: dict[str, str]) -> list[Any]:
    converter = RecordConverter(SENSOR)
    rows = [converter.from_json(json_record), converter.from_text(text_record)]
    # An Avro producer record decoded with the target schema, as the stream path does.
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SENSOR.avro_schema, {
        "sensor_id": json_record["sensor_id"],
        "value": float(json_record["value"]),
        "sampled_at": rows[0][2],
    })
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, SENSOR.avro_schema)
    assert isinstance(decoded, dict)
    rows.append(converter.from_json(decoded))
    return rows


@pytest.mark.parametrize(
    ("json_record", "text_record"),
    [
        (
            {"sensor_id": "s-1", "value": 2, "sampled_at": "2023-10-01T14:00:00.123456+02:00"},
            {"sensor_id": "s-1", "value": "2.0", "sampled_at": "1696161600123"},
        ),
        (
            {"sensor_id": "ü", "value": 0.1, "sampled_at": 1696161600000},
            {"sensor_id": "ü", "value": "1e-1", "sampled_at": "2023-10-01T12:00:00Z"},
        ),
    ],
)
def test_same_record_from_json_csv_and_avro_has_one_identity(
    json_record: dict[str, Any], text_record: dict[str, str]
) -> None:
    rows = _from_every_source(json_record, text_record)
    partitions = {partition_for("sensor_readings", record_key(SENSOR, r), 12) for r in rows}
    hashes = {record_hash("sensor_readings", "insert", r) for r in rows}
    keys = {key_json(SENSOR, r) for r in rows}
    assert len(partitions) == 1
    assert len(hashes) == 1
    assert len(keys) == 1
