"""RecordPreparer: raw records to envelope items and partitions, per operation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.envelope import Item
from schemas.identity import partition_for
from schemas.preparation import OPERATIONS, RecordPreparer, key_only
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_targets

PARTITIONS = 8
SAMPLED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SAMPLED_TEXT = "2024-05-01T12:00:00Z"


@pytest.fixture(scope="module")
def target() -> Target:
    return load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"]


def _expected_partition(sensor_id: str, sampled_at: datetime) -> int:
    return partition_for("sensor_readings", (sensor_id, sampled_at), PARTITIONS)


def test_operations() -> None:
    assert OPERATIONS == ("insert", "upsert", "delete")


@pytest.mark.parametrize("operation", ["insert", "upsert"])
def test_valid_record_becomes_a_full_row(target: Target, operation: str) -> None:
    preparer = RecordPreparer(target, operation, PARTITIONS)
    partition, item = preparer.prepare(
        5, {"sensor_id": "s-1", "value": 21, "sampled_at": SAMPLED_TEXT}
    )
    assert item == Item(5, ("s-1", 21.0, SAMPLED))
    assert type(item.row[1]) is float  # type: ignore[index]
    assert partition == _expected_partition("s-1", SAMPLED)
    assert preparer.target is target
    assert preparer.operation == operation


def test_delete_row_is_widened_with_none(target: Target) -> None:
    preparer = RecordPreparer(target, "delete", PARTITIONS)
    partition, item = preparer.prepare(0, {"sensor_id": "s-1", "sampled_at": SAMPLED_TEXT})
    assert item == Item(0, ("s-1", None, SAMPLED))
    assert partition == _expected_partition("s-1", SAMPLED)


def test_delete_goes_to_the_same_partition_as_the_insert(target: Target) -> None:
    raw = {"sensor_id": "s-9", "value": 1.5, "sampled_at": SAMPLED_TEXT}
    insert_partition, _ = RecordPreparer(target, "insert", PARTITIONS).prepare(0, raw)
    delete_partition, _ = RecordPreparer(target, "delete", PARTITIONS).prepare(
        0, {"sensor_id": "s-9", "sampled_at": SAMPLED_TEXT}
    )
    assert insert_partition == delete_partition


def test_delete_rejects_non_key_fields(target: Target) -> None:
    preparer = RecordPreparer(target, "delete", PARTITIONS)
    partition, item = preparer.prepare(
        11, {"sensor_id": "s-1", "value": 1.0, "sampled_at": SAMPLED_TEXT}
    )
    assert item.row is None
    assert item.index == 11
    assert item.error_code == "unknown_field"
    assert "'value'" in (item.error_message or "")
    assert partition == 11 % PARTITIONS


def test_delete_requires_every_key_field(target: Target) -> None:
    preparer = RecordPreparer(target, "delete", PARTITIONS)
    _, item = preparer.prepare(0, {"sensor_id": "s-1"})
    assert item.row is None
    assert item.error_code == "missing_field"
    assert "sampled_at" in (item.error_message or "")


def test_delete_from_csv_text(target: Target) -> None:
    preparer = RecordPreparer(target, "delete", PARTITIONS)
    partition, item = preparer.prepare(
        3, {"sensor_id": "s-1", "sampled_at": "1714564800000"}, textual=True
    )
    assert item == Item(3, ("s-1", None, SAMPLED))
    assert partition == _expected_partition("s-1", SAMPLED)


def test_key_only_keeps_key_columns_in_declared_order(target: Target) -> None:
    narrow = key_only(target)
    assert narrow.column_names == ("sensor_id", "sampled_at")
    assert narrow.key == target.key
    assert narrow.name == target.name
    # The original is untouched.
    assert target.column_names == ("sensor_id", "value", "sampled_at")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"sensor_id": "s-1", "value": "high", "sampled_at": SAMPLED_TEXT}, "wrong_type"),
        ({"sensor_id": "s-1", "sampled_at": SAMPLED_TEXT}, "missing_field"),
        ({"sensor_id": None, "value": 1.0, "sampled_at": SAMPLED_TEXT}, "null_not_allowed"),
        ({"sensor_id": "s-1", "value": 1.0, "sampled_at": "2024-05-01"}, "invalid_timestamp"),
        ({"sensor_id": "s-1", "value": 1.0, "sampled_at": SAMPLED_TEXT, "x": 1}, "unknown_field"),
        (["s-1", 1.0, SAMPLED_TEXT], "not_an_object"),
    ],
)
@pytest.mark.parametrize("index", [0, 3, 8, 13, 1001])
def test_invalid_record_becomes_failed_item(
    target: Target, raw: object, code: str, index: int
) -> None:
    partition, item = RecordPreparer(target, "insert", PARTITIONS).prepare(index, raw)
    assert item.index == index
    assert item.row is None
    assert item.error_code == code
    assert item.error_message
    assert partition == index % PARTITIONS


def test_invalid_csv_record_becomes_failed_item(target: Target) -> None:
    partition, item = RecordPreparer(target, "upsert", PARTITIONS).prepare(
        9, {"sensor_id": "s-1", "value": "abc", "sampled_at": SAMPLED_TEXT}, textual=True
    )
    assert item.row is None
    assert item.error_code == "wrong_type"
    assert partition == 9 % PARTITIONS


def test_error_message_does_not_carry_values(target: Target) -> None:
    _, item = RecordPreparer(target, "insert", PARTITIONS).prepare(
        0, {"sensor_id": "s-1", "value": "top-secret-reading", "sampled_at": SAMPLED_TEXT}
    )
    assert "top-secret-reading" not in (item.error_message or "")


def test_json_and_csv_of_the_same_record_agree(target: Target) -> None:
    preparer = RecordPreparer(target, "upsert", PARTITIONS)
    from_json = preparer.prepare(0, {"sensor_id": "s-1", "value": 1, "sampled_at": SAMPLED_TEXT})
    from_csv = preparer.prepare(
        0,
        {"sensor_id": "s-1", "value": "1.0", "sampled_at": "2024-05-01T14:00:00+02:00"},
        textual=True,
    )
    assert from_json == from_csv


@settings(max_examples=60, deadline=None, database=None)
@given(
    sensor_id=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=20,
    ),
    millis=st.integers(min_value=-(10**12), max_value=10**13),
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    partitions=st.integers(min_value=1, max_value=64),
    operation=st.sampled_from(["insert", "upsert"]),
)
def test_same_key_same_partition_whatever_the_format(
    target: Target, sensor_id: str, millis: int, value: float, partitions: int, operation: str
) -> None:
    preparer = RecordPreparer(target, operation, partitions)
    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)
    json_partition, json_item = preparer.prepare(
        0, {"sensor_id": sensor_id, "value": value, "sampled_at": millis}
    )
    csv_partition, csv_item = preparer.prepare(
        1,
        {"sensor_id": sensor_id, "value": repr(value), "sampled_at": instant.isoformat()},
        textual=True,
    )
    delete_partition, _ = RecordPreparer(target, "delete", partitions).prepare(
        2, {"sensor_id": sensor_id, "sampled_at": str(millis)}, textual=True
    )
    assert json_item.row is not None, json_item
    assert csv_item.row == json_item.row
    assert json_partition == csv_partition == delete_partition
    assert 0 <= json_partition < partitions
    assert json_partition == partition_for("sensor_readings", (sensor_id, instant), partitions)


def test_keys_spread_over_partitions(target: Target) -> None:
    preparer = RecordPreparer(target, "insert", PARTITIONS)
    used = {
        preparer.prepare(i, {"sensor_id": f"s-{i}", "value": 0.0, "sampled_at": SAMPLED_TEXT})[0]
        for i in range(200)
    }
    assert used == set(range(PARTITIONS))


def test_single_partition(target: Target) -> None:
    preparer = RecordPreparer(target, "insert", 1)
    for i in range(10):
        partition, _ = preparer.prepare(
            i, {"sensor_id": f"s-{i}", "value": 0.0, "sampled_at": SAMPLED_TEXT}
        )
        assert partition == 0
    assert preparer.prepare(7, {})[0] == 0


@pytest.mark.parametrize("operation", ["merge", "INSERT", "", "replace", "Delete"])
def test_unknown_operation_is_rejected(target: Target, operation: str) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        RecordPreparer(target, operation, PARTITIONS)
