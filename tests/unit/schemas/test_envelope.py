"""The record envelope codec: lossless round trips, wire shape, and every way decoding fails."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.errors import SluiceError
from schemas.envelope import (
    ENVELOPE_VERSION,
    MALFORMED_ENVELOPE,
    MAX_ENVELOPE_BYTES,
    UNKNOWN_TARGET,
    Envelope,
    EnvelopeCodec,
    EnvelopeError,
    Item,
    UnknownTargetError,
    salvage,
)
from schemas.received import RecordText
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_target, load_targets

SAMPLED = datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)


@pytest.fixture(scope="module")
def targets() -> dict[str, Target]:
    return load_targets(BUILTIN_TARGETS_DIR)


@pytest.fixture(scope="module")
def codec(targets: dict[str, Target]) -> EnvelopeCodec:
    return EnvelopeCodec(targets)


def _sensor_envelope(**overrides: Any) -> Envelope:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "target": "sensor_readings",
        "operation": "insert",
        "items": [
            Item(0, ("s-1", 21.5, SAMPLED)),
            Item(1, ("s-2", -3.25, SAMPLED + timedelta(seconds=1))),
        ],
    }
    fields.update(overrides)
    return Envelope(**fields)


def _wire(codec: EnvelopeCodec, envelope: Envelope) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(codec.encode(envelope))
    return doc


# --- round trips -------------------------------------------------------------------


def test_sensor_rows_round_trip_equal(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope()
    decoded = codec.decode(codec.encode(envelope))
    assert decoded == envelope
    assert decoded.items[0].row == ("s-1", 21.5, SAMPLED)


def test_decoded_timestamps_are_aware_utc(codec: EnvelopeCodec) -> None:
    decoded = codec.decode(codec.encode(_sensor_envelope()))
    for item in decoded.items:
        assert item.row is not None
        sampled_at = item.row[2]
        assert isinstance(sampled_at, datetime)
        assert sampled_at.utcoffset() == timedelta(0)


def test_decoded_rows_are_tuples(codec: EnvelopeCodec) -> None:
    decoded = codec.decode(codec.encode(_sensor_envelope()))
    assert all(type(item.row) is tuple for item in decoded.items)


def test_timestamps_travel_as_rfc_3339_text(codec: EnvelopeCodec) -> None:
    doc = _wire(codec, _sensor_envelope())
    assert doc["items"][0] == [0, ["s-1", 21.5, "2024-05-01T12:30:15.123000+00:00"], None, None]
    assert doc["items"][1][1][2] == "2024-05-01T12:30:16.123000+00:00"


def test_version_1_envelopes_are_still_read(codec: EnvelopeCodec) -> None:
    """Records written by the release before (epoch microseconds) are applied after an upgrade."""
    micros = (SAMPLED - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    v1 = orjson.dumps({"v": 1, "job": "job-1", "target": "sensor_readings", "op": "insert",
                       "src": None, "items": [[0, ["s-1", 21.5, micros], None, None],
                                              [1, None, "wrong_type", "m"]]})
    decoded = codec.decode(v1)
    assert decoded.items[0] == Item(0, ("s-1", 21.5, SAMPLED))
    assert decoded.items[1] == Item(1, None, "wrong_type", "m")


def test_wire_header_fields(codec: EnvelopeCodec) -> None:
    doc = _wire(codec, _sensor_envelope(operation="upsert"))
    assert doc["v"] == ENVELOPE_VERSION == 2
    assert doc["job"] == "job-1"
    assert doc["target"] == "sensor_readings"
    assert doc["op"] == "upsert"
    assert doc["src"] is None


def test_pre_epoch_and_microsecond_timestamps_round_trip(codec: EnvelopeCodec) -> None:
    instants = [
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=UTC),
    ]
    envelope = _sensor_envelope(items=[Item(i, ("s", 0.0, t)) for i, t in enumerate(instants)])
    decoded = codec.decode(codec.encode(envelope))
    assert [item.row[2] for item in decoded.items if item.row] == instants


def test_non_utc_aware_timestamp_comes_back_as_same_instant(codec: EnvelopeCodec) -> None:
    from datetime import timezone

    local = datetime(2024, 5, 1, 14, 30, 15, 123000, tzinfo=timezone(timedelta(hours=2)))
    envelope = _sensor_envelope(items=[Item(0, ("s", 1.0, local))])
    decoded = codec.decode(codec.encode(envelope))
    assert decoded.items[0].row is not None
    assert decoded.items[0].row[2] == SAMPLED
    assert decoded.items[0].row[2].utcoffset() == timedelta(0)


def test_failed_items_round_trip(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope(
        items=[
            Item(0, ("s-1", 1.0, SAMPLED)),
            Item(1, None, "wrong_type", "field 'value': expected double, got string"),
            Item(2, None, "missing_field", "field 'sensor_id' is required"),
        ]
    )
    decoded = codec.decode(codec.encode(envelope))
    assert decoded == envelope
    failed = decoded.items[1]
    assert failed.row is None
    assert failed.error_code == "wrong_type"
    assert failed.error_message == "field 'value': expected double, got string"
    assert _wire(codec, envelope)["items"][2] == [
        2, None, "missing_field", "field 'sensor_id' is required"
    ]


def test_empty_envelope_round_trips(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope(items=[])
    assert codec.decode(codec.encode(envelope)) == envelope


def test_source_topic_and_partition_round_trip(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope(
        job_id="sluice.input.sensor_readings:3",
        source_topic="sluice.input.sensor_readings",
        source_partition=3,
    )
    assert _wire(codec, envelope)["src"] == ["sluice.input.sensor_readings", 3]
    decoded = codec.decode(codec.encode(envelope))
    assert decoded.source_topic == "sluice.input.sensor_readings"
    assert decoded.source_partition == 3
    assert decoded == envelope


def test_source_partition_zero_is_kept(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope(source_topic="in", source_partition=0)
    decoded = codec.decode(codec.encode(envelope))
    assert decoded.source_topic == "in"
    assert decoded.source_partition == 0


def test_no_source_decodes_as_none(codec: EnvelopeCodec) -> None:
    decoded = codec.decode(codec.encode(_sensor_envelope()))
    assert decoded.source_topic is None
    assert decoded.source_partition is None


def test_encoding_does_not_mutate_the_rows(codec: EnvelopeCodec) -> None:
    row = ("s-1", 1.0, SAMPLED)
    items = [Item(0, row)]
    codec.encode(_sensor_envelope(items=items))
    assert items[0].row is row
    assert row[2] is SAMPLED


def _write_target(directory: Path, schema: dict[str, Any]) -> Target:
    path = directory / f"{schema['name']}.avsc"
    path.write_text(json.dumps(schema))
    return load_target(path)


def test_dates_micros_and_nulls_round_trip(tmp_path: Path) -> None:
    target = _write_target(
        tmp_path,
        {
            "type": "record",
            "name": "events",
            "sluice.key": ["id"],
            "fields": [
                {"name": "id", "type": "long"},
                {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "seen", "type": ["null", {"type": "long",
                                                    "logicalType": "timestamp-millis"}]},
                {"name": "ok", "type": "boolean"},
            ],
        },
    )
    codec = EnvelopeCodec({"events": target})
    at = datetime(2023, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    envelope = Envelope(
        "job-2", "events", "upsert",
        [
            Item(7, (1, date(2023, 1, 2), at, None, True)),
            Item(8, (2, None, at, at, False)),
            Item(9, (3, date(1969, 12, 31), at, None, True)),
        ],
    )
    doc = orjson.loads(codec.encode(envelope))
    assert doc["items"][0][1] == [1, "2023-01-02", "2023-01-02T03:04:05.678901+00:00", None, True]
    assert doc["items"][2][1][1] == "1969-12-31"
    assert codec.decode(codec.encode(envelope)) == envelope


# --- decoding failures -------------------------------------------------------------


def _tampered(codec: EnvelopeCodec, **changes: Any) -> bytes:
    doc = _wire(codec, _sensor_envelope())
    for key, value in changes.items():
        if value is _DELETE:
            del doc[key]
        else:
            doc[key] = value
    return orjson.dumps(doc)


_DELETE = object()


@pytest.mark.parametrize("version", [0, 3, "1", "2", None, 1.0, True])
def test_other_versions_are_rejected(codec: EnvelopeCodec, version: object) -> None:
    with pytest.raises(EnvelopeError, match="unsupported envelope version"):
        codec.decode(_tampered(codec, v=version))


def test_missing_version_is_rejected(codec: EnvelopeCodec) -> None:
    with pytest.raises(EnvelopeError, match="unsupported envelope version None"):
        codec.decode(_tampered(codec, v=_DELETE))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b"not json at all",
        b'{"v": 1, "job": "j"',
        b"[1, 2, 3]",
        b"42",
        b"null",
        b'"a string"',
    ],
)
def test_garbage_bytes_raise_envelope_error(codec: EnvelopeCodec, data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        codec.decode(data)


@pytest.mark.parametrize("missing", ["job", "target", "op", "items"])
def test_missing_members_raise_envelope_error(codec: EnvelopeCodec, missing: str) -> None:
    with pytest.raises(EnvelopeError, match="malformed envelope: KeyError"):
        codec.decode(_tampered(codec, **{missing: _DELETE}))


def test_unknown_target_raises_with_every_record_failed(codec: EnvelopeCodec) -> None:
    with pytest.raises(UnknownTargetError, match="no_such_table") as caught:
        codec.decode(_tampered(codec, target="no_such_table"))
    failed = caught.value.failed
    assert failed.target == "no_such_table"
    assert [i.index for i in failed.items] == [i.index for i in codec.decode(_tampered(codec)).items]
    assert {(i.row, i.error_code) for i in failed.items} == {(None, UNKNOWN_TARGET)}


def test_salvage_fails_every_named_record_or_gives_none(codec: EnvelopeCodec) -> None:
    data = _tampered(codec, items=[[3, ["s", "not a double", 0], None, None], [7, None, "x", "y"]])
    salvaged = salvage(data, MALFORMED_ENVELOPE, "cannot read")
    assert salvaged is not None
    assert [(i.index, i.row, i.error_code) for i in salvaged.items] == [
        (3, None, MALFORMED_ENVELOPE), (7, None, MALFORMED_ENVELOPE)]
    assert salvage(b"\x00garbage", MALFORMED_ENVELOPE, "m") is None
    assert salvage(_tampered(codec, items=[["three", None, None, None]]), MALFORMED_ENVELOPE, "m") is None


@pytest.mark.parametrize(
    "items",
    [
        [[0, ["s", 1.0, 0], None]],  # three members instead of four
        [[0, ["s", 1.0, "yesterday"], None, None]],  # timestamp not an integer
        "not a list of items",
        [5],
    ],
)
def test_malformed_items_raise_envelope_error(codec: EnvelopeCodec, items: object) -> None:
    with pytest.raises(EnvelopeError):
        codec.decode(_tampered(codec, items=items))


def test_envelope_error_chains_the_cause_and_is_a_sluice_error(codec: EnvelopeCodec) -> None:
    with pytest.raises(EnvelopeError) as caught:
        codec.decode(b"garbage")
    assert isinstance(caught.value, SluiceError)
    assert isinstance(caught.value.__cause__, orjson.JSONDecodeError)
    # The message names the problem, not the bytes.
    assert "garbage" not in str(caught.value)


# --- encode_bounded ----------------------------------------------------------------


def _long_rows(count: int, width: int = 1000) -> list[Item]:
    return [Item(i, (f"s-{i}-" + "x" * width, float(i), SAMPLED)) for i in range(count)]


def test_max_envelope_bytes_is_below_the_broker_default() -> None:
    assert 0 < MAX_ENVELOPE_BYTES < 1_000_000


def test_small_envelope_is_encoded_whole(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope()
    assert codec.encode_bounded(envelope, MAX_ENVELOPE_BYTES) == [(envelope, codec.encode(envelope))]


def test_exactly_the_limit_is_not_split(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope(items=_long_rows(4))
    size = len(codec.encode(envelope))
    assert codec.encode_bounded(envelope, size) == [(envelope, codec.encode(envelope))]
    assert len(codec.encode_bounded(envelope, size - 1)) > 1


@pytest.mark.parametrize(("count", "max_bytes"), [(10, 5_000), (33, 8_000), (7, 1_500)])
def test_large_envelope_is_split_into_parts_that_fit(
    codec: EnvelopeCodec, count: int, max_bytes: int
) -> None:
    envelope = _sensor_envelope(
        items=_long_rows(count), source_topic="in", source_partition=1, operation="upsert"
    )
    parts = [data for _, data in codec.encode_bounded(envelope, max_bytes)]
    assert len(parts) > 1
    assert all(len(part) <= max_bytes for part in parts)
    decoded = [codec.decode(part) for part in parts]
    # Every part is a complete envelope of the same job, in order, nothing lost or repeated.
    assert [item for part in decoded for item in part.items] == list(envelope.items)
    for part in decoded:
        assert part.items
        assert (part.job_id, part.target, part.operation) == ("job-1", "sensor_readings", "upsert")
        assert (part.source_topic, part.source_partition) == ("in", 1)


def test_a_single_oversized_record_is_left_whole(codec: EnvelopeCodec) -> None:
    envelope = _sensor_envelope(items=_long_rows(1, width=5_000))
    parts = [data for _, data in codec.encode_bounded(envelope, 1_000)]
    assert parts == [codec.encode(envelope)]
    assert len(parts[0]) > 1_000


def test_an_oversized_record_among_small_ones_gets_its_own_part(codec: EnvelopeCodec) -> None:
    items = [*_long_rows(3, width=10), Item(3, ("big" + "y" * 5_000, 0.0, SAMPLED)),
             *[Item(i, ("s", 0.0, SAMPLED)) for i in range(4, 8)]]
    envelope = _sensor_envelope(items=items)
    parts = [codec.decode(p) for _, p in codec.encode_bounded(envelope, 1_000)]
    assert [item for part in parts for item in part.items] == items
    (big,) = [part for part in parts if any(item.index == 3 for item in part.items)]
    assert [item.index for item in big.items] == [3]


# --- the record as received, for failed items ----------------------------------------------


def _with_received() -> Envelope:
    return _sensor_envelope(
        items=[Item(0, ("s-1", 1.0, SAMPLED)),
               Item(1, None, "wrong_type", "m"),
               Item(2, None, "malformed_record", "line 3: not valid JSON")],
        received={1: RecordText('{"sensor_id":"s-1","value":"x"}'),
                  2: RecordText("{" * 4096, True)})


def test_received_records_round_trip(codec: EnvelopeCodec) -> None:
    envelope = _with_received()
    decoded = codec.decode(codec.encode(envelope))
    assert decoded == envelope
    assert decoded.received[2] == RecordText("{" * 4096, True)


def test_received_records_travel_beside_the_items_which_keep_their_four_members(
        codec: EnvelopeCodec) -> None:
    """A worker of the release before reads items as four members and ignores what else the
    envelope holds: an envelope from a newer web still applies there, without the records."""
    doc = _wire(codec, _with_received())
    assert [len(item) for item in doc["items"]] == [4, 4, 4]
    assert doc["rec"] == [[1, '{"sensor_id":"s-1","value":"x"}', False], [2, "{" * 4096, True]]
    for index, _row, _code, _message in doc["items"]:  # how the release before unpacks them
        assert index in (0, 1, 2)


def test_an_envelope_without_received_records_has_no_member_for_them(codec: EnvelopeCodec) -> None:
    assert "rec" not in _wire(codec, _sensor_envelope())
    assert codec.decode(codec.encode(_sensor_envelope())).received == {}


def test_split_parts_keep_the_received_records_of_their_own_items(codec: EnvelopeCodec) -> None:
    items = [Item(i, None, "wrong_type", "m") for i in range(20)]
    received = {i: RecordText("r" * 300 + str(i)) for i in range(0, 20, 3)}
    envelope = _sensor_envelope(items=items, received=received)
    parts = codec.encode_bounded(envelope, 2_000)
    assert len(parts) > 1
    back: dict[int, RecordText] = {}
    for part, data in parts:
        decoded = codec.decode(data)
        assert decoded == part
        own = {item.index for item in part.items}
        assert set(part.received) <= own
        back.update(part.received)
    assert back == received


def test_salvage_and_older_envelopes_carry_no_received_records(codec: EnvelopeCodec) -> None:
    data = codec.encode(_with_received())
    salvaged = salvage(data, MALFORMED_ENVELOPE, "m")
    assert salvaged is not None and salvaged.received == {}
