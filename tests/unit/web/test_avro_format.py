"""AvroFramer: Avro Object Container Files in, records out, the file's schema checked first."""

from __future__ import annotations

import copy
import io
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import orjson
import pytest

from schemas.targets import Target
from schemas.validation import RecordInvalid
from tests.unit.web.test_protobuf_format import row_of
from web.payloads.avro_format import BLOCK_BYTES, HEADER_BYTES, AvroFramer
from web.payloads.binary import Framed, write_varint
from web.payloads.records import (
    ConvertedRecord,
    MalformedRecord,
    PayloadError,
    RawRecord,
    RecordCode,
)

CHUNKINGS = [None, 1, 7]
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SYNC = bytes(range(16))


def _writer_schema(target: Target) -> dict[str, Any]:
    """The target's schema as a client would write with it (the .avsc, without sluice.*)."""
    return {k: v for k, v in copy.deepcopy(target.document).items() if not k.startswith("sluice.")}


def _readings(n: int, sensor: str = "s") -> list[dict[str, Any]]:
    return [{"sensor_id": f"{sensor}-{i}", "value": i / 2, "sampled_at": AT + timedelta(seconds=i)}
            for i in range(n)]


def ocf(schema: dict[str, Any], records: list[dict[str, Any]], codec: str = "null",
        sync_interval: int = 1000) -> bytes:
    """An Object Container File as fastavro writes it (small blocks: many of them)."""
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), records, codec=codec,
                    sync_interval=sync_interval, sync_marker=SYNC)
    return out.getvalue()


def zz(value: int) -> bytes:
    """An Avro long: zigzag, then varint."""
    return write_varint((value << 1) ^ (value >> 63))


def header(schema: Any, codec: str = "null") -> bytes:
    """A header written by hand, for what fastavro will not write."""
    meta = {"avro.schema": orjson.dumps(schema), "avro.codec": codec.encode()}
    out = b"Obj\x01" + zz(len(meta))
    for key, value in meta.items():
        out += zz(len(key)) + key.encode() + zz(len(value)) + value
    return out + zz(0) + SYNC


def block(count: int, data: bytes) -> bytes:
    return zz(count) + zz(len(data)) + data + SYNC


def frame(framer: AvroFramer, body: bytes, chunk: int | None,
          out: list[Framed] | None = None) -> list[Framed]:
    out = [] if out is None else out
    size = chunk or max(len(body), 1)
    for start in range(0, len(body), size):
        for batch in framer.feed(body[start:start + size]):
            assert 0 < len(batch) <= 1024
            out.extend(batch)
    framer.finish()
    return out


def _framer(target: Target, **options: Any) -> AvroFramer:
    options.setdefault("max_record_bytes", 1 << 20)
    options.setdefault("max_bytes", 1 << 30)
    return AvroFramer(target, **options)


@pytest.mark.parametrize("codec", ["null", "deflate"])
@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_records_whatever_the_chunking(targets: dict[str, Target], chunk: int | None, codec: str) -> None:
    target = targets["sensor_readings"]
    body = ocf(_writer_schema(target), _readings(1500), codec)
    records = frame(_framer(target), body, chunk)
    assert [r.index for r in records] == list(range(1500))
    assert all(type(r) is ConvertedRecord for r in records)
    assert row_of(records[7], target) == ("s-7", 3.5, AT + timedelta(seconds=7))


def test_an_invalid_value_takes_the_exact_path(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    readings = _readings(2)
    readings[1]["value"] = float("nan")
    records = frame(_framer(target), ocf(_writer_schema(target), readings), None)
    assert [type(r) for r in records] == [ConvertedRecord, RawRecord]
    with pytest.raises(RecordInvalid) as caught:
        row_of(records[1], target)
    assert caught.value.code == "out_of_range"


def test_an_incompatible_writer_schema_is_refused_before_any_record(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    schema = _writer_schema(target)
    schema["fields"][1] = {"name": "value", "type": "string"}
    body = ocf(schema, [{**r, "value": "x"} for r in _readings(10)])
    records: list[Framed] = []
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), body, None, records)
    assert caught.value.status == 422
    assert caught.value.detail == ("the file's records cannot be read as sensor_readings: field "
                                   "'value': the file writes string, which cannot be read as the "
                                   "target's double")
    assert records == []


@pytest.mark.parametrize(("change", "detail"), [
    (lambda s: s["fields"].pop(0), "field 'sensor_id': not in the file's schema, and the target "
                                   "gives it no default"),
    (lambda s: s["fields"][0].update(type=["null", "string"]),
     "field 'sensor_id': the file's schema allows null, the target does not"),
    (lambda s: s.update(name="other"), "the file's record is not named 'sensor_readings', as the target is"),
    (lambda s: s["fields"][2].update(type=["null", "string"]),
     "field 'sampled_at': the file's schema allows null, the target does not"),
    (lambda s: s["fields"][2].update(type=["long", "string"]),
     "field 'sampled_at': the file writes string, which cannot be read as the target's long"),
    (lambda s: s["fields"][0].update(type={"type": "enum", "name": "e", "symbols": ["A"]}),
     "field 'sensor_id': the file writes enum, which cannot be read as the target's string"),
])
def test_writer_schemas_that_do_not_resolve(targets: dict[str, Target], change: Any,
                                            detail: str) -> None:
    target = targets["sensor_readings"]
    schema = _writer_schema(target)
    change(schema)
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), header(schema), None)
    assert caught.value.status == 422
    assert caught.value.detail.endswith(detail)


def test_an_evolved_writer_schema_is_accepted(targets: dict[str, Target]) -> None:
    """Fields in another order, one more with a default, int where the target has double."""
    target = targets["sensor_readings"]
    schema = _writer_schema(target)
    sensor, value, sampled = schema["fields"]
    schema["fields"] = [sampled, {"name": "site", "type": "string", "default": "here"},
                        {**value, "type": "int"}, sensor]
    records = [{"sampled_at": AT, "site": "north", "value": 3, "sensor_id": "a"}]
    (record,) = frame(_framer(target), ocf(schema, records, "deflate"), 5)
    assert row_of(record, target) == ("a", 3.0, AT)


def test_a_target_default_fills_a_field_the_file_lacks(targets: dict[str, Target], tmp_path: Any) -> None:
    from tests.unit.schemas.test_protobuf import make_target
    target = make_target(tmp_path, [{"name": "id", "type": "string"},
                                    {"name": "note", "type": ["null", "string"], "default": None}])
    writer = {"type": "record", "name": "every_type", "fields": [{"name": "id", "type": "string"}]}
    (record,) = frame(_framer(target), ocf(writer, [{"id": "k"}]), None)
    assert row_of(record, target) == ("k", None)


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_a_wrong_sync_marker_is_refused(targets: dict[str, Target], chunk: int | None) -> None:
    target = targets["sensor_readings"]
    body = bytearray(ocf(_writer_schema(target), _readings(200)))
    last = body.rfind(SYNC)
    body[last] ^= 0xFF
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), bytes(body), chunk)
    assert caught.value.status == 400
    assert "sync marker" in caught.value.detail


@pytest.mark.parametrize("cut", [1, 17, 40])
def test_a_truncated_file_is_refused(targets: dict[str, Target], cut: int) -> None:
    target = targets["sensor_readings"]
    body = ocf(_writer_schema(target), _readings(50))
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), body[:-cut], 7)
    assert caught.value.status == 400 and "truncated" in caught.value.detail


def test_a_truncated_header_is_refused(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    with pytest.raises(PayloadError, match="inside the Avro header"):
        frame(_framer(target), header(_writer_schema(target))[:30], None)


def test_not_an_avro_file(targets: dict[str, Target]) -> None:
    with pytest.raises(PayloadError) as caught:
        frame(_framer(targets["sensor_readings"]), b'{"sensor_id": "a"}', 1)
    assert caught.value.status == 400 and "Obj" in caught.value.detail


def test_an_unsupported_codec_is_415(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), header(_writer_schema(target), "snappy"), None)
    assert caught.value.status == 415
    assert caught.value.detail == ("Avro codec 'snappy' is not supported: write the file with "
                                   "codec null or deflate")


def test_a_header_over_the_record_limit_is_413(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    schema = {**_writer_schema(target), "doc": "x" * HEADER_BYTES}
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), header(schema), 100_000)
    assert caught.value.status == 413


def test_a_block_bomb_is_refused(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    bomb = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = bomb.compress(b"\x00" * (BLOCK_BYTES + 1024)) + bomb.flush()
    assert len(data) < 100_000
    body = header(_writer_schema(target), "deflate") + block(3, data)
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target), body, None)
    assert caught.value.status == 413 and "inflates past" in caught.value.detail


def test_a_block_declared_too_big_is_refused_before_its_bytes(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    framer = _framer(target)
    with pytest.raises(PayloadError) as caught:
        list(framer.feed(header(_writer_schema(target)) + zz(1) + zz(BLOCK_BYTES + 1)))
    assert caught.value.status == 413 and "write smaller blocks" in caught.value.detail


def test_blocks_inflating_past_the_body_limit_are_refused(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    body = ocf(_writer_schema(target), _readings(2000), "deflate")
    with pytest.raises(PayloadError) as caught:
        frame(_framer(target, max_bytes=len(body)), body, None)
    assert caught.value.status == 413


def test_a_block_claiming_more_records_than_bytes(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    with pytest.raises(PayloadError, match="cannot fit"):
        frame(_framer(target), header(_writer_schema(target)) + block(1000, b"\x02a"), None)


def test_a_block_that_does_not_decode(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    with pytest.raises(PayloadError, match="does not decode"):
        frame(_framer(target), header(_writer_schema(target)) + block(2, b"\x02a\x00"), None)


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_a_record_over_the_limit_fails_alone(targets: dict[str, Target], chunk: int | None) -> None:
    target = targets["sensor_readings"]
    readings = _readings(5)
    readings[2]["sensor_id"] = "x" * 500
    records = frame(_framer(target, max_record_bytes=400), ocf(_writer_schema(target), readings), chunk)
    assert [type(r) for r in records] == [ConvertedRecord, ConvertedRecord, MalformedRecord,
                                          ConvertedRecord, ConvertedRecord]
    assert isinstance(records[2], MalformedRecord) and records[2].code == RecordCode.TOO_LARGE


def test_a_delete_keeps_only_the_key(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    (record,) = frame(_framer(target, key_only=True), ocf(_writer_schema(target), _readings(1)), None)
    assert isinstance(record, ConvertedRecord) and record.row == ("s-0", AT)


def test_a_header_alone_has_no_records(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    assert frame(_framer(target), ocf(_writer_schema(target), []), None) == []
    assert frame(_framer(target), b"", None) == []
