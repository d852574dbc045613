"""ProtobufFramer: length-delimited messages of a target's class in, records out, chunking aside."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from schemas.protobuf import message_class
from schemas.targets import Target
from schemas.validation import RecordConverter, RecordInvalid
from tests.unit.schemas.test_protobuf import EVERY_TYPE, make_target
from web.payloads.binary import Framed, write_varint
from web.payloads.protobuf_format import ProtobufFramer
from web.payloads.records import (
    ConvertedRecord,
    MalformedRecord,
    PayloadError,
    RawRecord,
    RecordCode,
)

CHUNKINGS = [None, 1, 7]
AT = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def delimited(*messages: Message | bytes) -> bytes:
    """Messages as writeDelimitedTo writes them: each after its length as a varint."""
    out = b""
    for message in messages:
        data = message if isinstance(message, bytes) else message.SerializeToString()
        out += write_varint(len(data)) + data
    return out


def reading(target: Target, i: int, sensor: str = "s") -> Message:
    message = message_class(target)(sensor_id=f"{sensor}-{i}", value=i / 2)
    message.sampled_at.FromDatetime(AT + timedelta(seconds=i))
    return message


def frame(framer: ProtobufFramer, body: bytes, chunk: int | None) -> list[Framed]:
    out: list[Framed] = []
    size = chunk or max(len(body), 1)
    for start in range(0, len(body), size):
        for batch in framer.feed(body[start:start + size]):
            assert 0 < len(batch) <= 1024
            out.extend(batch)
    framer.finish()
    return out


def row_of(record: Framed, target: Target) -> tuple[Any, ...]:
    """The row a framed record stands for: made already, or by the exact path."""
    if isinstance(record, ConvertedRecord):
        return record.row
    assert isinstance(record, RawRecord), record
    return RecordConverter(target).from_json(record.value)


def _framer(target: Target, **options: Any) -> ProtobufFramer:
    options.setdefault("max_record_bytes", 1 << 20)
    return ProtobufFramer(target, **options)


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_records_whatever_the_chunking(targets: dict[str, Target], chunk: int | None) -> None:
    target = targets["sensor_readings"]
    body = delimited(*(reading(target, i) for i in range(300)))
    records = frame(_framer(target), body, chunk)
    assert [r.index for r in records] == list(range(300))
    assert all(type(r) is ConvertedRecord for r in records)
    # Stored to the millisecond, as the same instant sent as JSON or Avro would be.
    assert row_of(records[1], target) == ("s-1", 0.5, AT.replace(microsecond=123000)
                                          + timedelta(seconds=1))


def test_an_invalid_value_takes_the_exact_path(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    message = reading(target, 1, sensor="nul\x00")
    (record,) = frame(_framer(target), delimited(message), None)
    # A Timestamp becomes the column's epoch unit; the converter says what is wrong.
    assert isinstance(record, RawRecord)
    assert record.value == {"sensor_id": "nul\x00-1", "value": 0.5, "sampled_at": 1_714_564_801_123}
    with pytest.raises(RecordInvalid) as caught:
        row_of(record, target)
    assert caught.value.code == "invalid_string"


def test_many_small_messages_come_in_bounded_lists(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    records = frame(_framer(target), delimited(*[b""] * 5000), None)
    assert len(records) == 5000
    # An empty message is all defaults: a missing Timestamp fails as a missing field.
    assert isinstance(records[0], RawRecord)
    with pytest.raises(RecordInvalid) as caught:
        RecordConverter(target).from_json(records[0].value)
    assert caught.value.code == "missing_field"


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_a_record_over_the_limit_fails_alone(targets: dict[str, Target], chunk: int | None) -> None:
    target = targets["sensor_readings"]
    big = message_class(target)(sensor_id="x" * 500, value=1.0)
    body = delimited(reading(target, 0), big, reading(target, 2), big)
    records = frame(_framer(target, max_record_bytes=100), body, chunk)
    assert [type(r) for r in records] == [ConvertedRecord, MalformedRecord, ConvertedRecord,
                                          MalformedRecord]
    assert isinstance(records[1], MalformedRecord)
    assert records[1].code == RecordCode.TOO_LARGE and records[1].index == 1
    assert "over the 100-byte limit" in records[1].message


def test_a_record_over_the_limit_is_not_held(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    framer = _framer(target, max_record_bytes=100)
    assert list(framer.feed(write_varint(10_000_000) + b"x" * 1000)) == [
        [MalformedRecord(0, RecordCode.TOO_LARGE, "record 0: 10000000 bytes, over the 100-byte limit")]]
    for _ in range(100):
        assert list(framer.feed(b"x" * 10_000)) == []
    assert framer._parts == [] and framer._skip == 10_000_000 - 1_001_000
    with pytest.raises(PayloadError) as caught:
        framer.finish()
    assert caught.value.status == 400


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_a_message_that_does_not_parse_fails_alone(
    targets: dict[str, Target], chunk: int | None
) -> None:
    target = targets["sensor_readings"]
    body = delimited(reading(target, 0), b"\x0a\x05ab", b"\x0a\x02\xff\xfe", reading(target, 3))
    records = frame(_framer(target), body, chunk)
    assert [type(r) for r in records] == [ConvertedRecord, MalformedRecord, MalformedRecord,
                                          ConvertedRecord]
    assert all(r.code == RecordCode.MALFORMED for r in records if isinstance(r, MalformedRecord))
    assert isinstance(records[2], MalformedRecord)
    assert records[2].message == \
        "record 2: not a sluice.targets.SensorReadings message: String field had bad UTF-8"


def test_unknown_fields_fail_the_record(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    with_extra = reading(target, 0).SerializeToString() + b"\x28\x05"  # field 5, varint 5
    (record,) = frame(_framer(target), delimited(with_extra), None)
    assert isinstance(record, MalformedRecord)
    assert record.code == "unknown_field"
    assert "field number(s) 5 unknown" in record.message


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_a_truncated_body_is_rejected(targets: dict[str, Target], cut: int) -> None:
    target = targets["sensor_readings"]
    body = delimited(reading(target, 0), reading(target, 1))
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), body[:-cut], 3)
    assert caught.value.status == 400
    assert "truncated" in caught.value.detail


def test_a_body_cut_inside_a_length_is_rejected(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    body = delimited(reading(target, 0)) + write_varint(300)[:1]
    with pytest.raises(PayloadError, match="truncated"):
        frame(_framer(target), body, None)


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_a_varint_over_ten_bytes_is_rejected(targets: dict[str, Target], chunk: int | None) -> None:
    target = targets["sensor_readings"]
    body = delimited(reading(target, 0)) + b"\xff" * 11 + b"\x01"
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), body, chunk)
    assert caught.value.status == 400
    assert "varint longer than 10 bytes" in caught.value.detail


def test_optional_fields_unset_are_null(tmp_path: Path) -> None:
    target = make_target(tmp_path, EVERY_TYPE)
    cls = message_class(target)
    message = cls(id="k", small=-3, big=0, ratio=0.25, flag=True, day=19000)
    message.at_ms.FromDatetime(AT)
    (record,) = frame(_framer(target), delimited(message), None)
    assert isinstance(record, ConvertedRecord)
    assert record.row == ("k", -3, 0, 0.25, None, True, AT.replace(microsecond=123000), None,
                          date(2022, 1, 8), None)


def test_microsecond_timestamps(tmp_path: Path) -> None:
    target = make_target(tmp_path, EVERY_TYPE)
    message = message_class(target)(id="k")
    message.at_ms.FromDatetime(AT)
    message.at_us.FromDatetime(AT)
    (record,) = frame(_framer(target), delimited(message), None)
    assert row_of(record, target)[7] == AT


def test_a_delete_keeps_only_the_key(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    (record,) = frame(_framer(target, key_only=True), delimited(reading(target, 4)), None)
    assert isinstance(record, ConvertedRecord)
    assert record.row == ("s-4", AT.replace(microsecond=123000) + timedelta(seconds=4))


def test_an_empty_body_has_no_records(targets: dict[str, Target]) -> None:
    assert frame(_framer(targets["sensor_readings"]), b"", None) == []
