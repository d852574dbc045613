"""Hostile payloads against the record limits: huge fields, huge records, many keys and long
target names are refused with a short 4xx (or fail alone), never held whole in memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.envelope import MAX_ENVELOPE_BYTES, Envelope, EnvelopeCodec, Item
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_targets
from web.echo import ECHO_CHARS, echo
from web.payloads import (
    MalformedRecord,
    MediaType,
    PayloadError,
    PayloadProblem,
    PayloadReader,
    RawRecord,
    RecordCode,
)
from web.payloads.limits import JSON_SLICE_BYTES, exceeds_fields, fields_need_counting_past
from web.problems import MAX_DETAIL_CHARS, Problem, ProblemType
from web.submission import fail_alone_if_oversize, resolve_target

T = TypeVar("T")
Record = RawRecord | MalformedRecord
NDJSON, JSON, CSV = MediaType.NDJSON, MediaType.JSON, MediaType.CSV
LIMIT = 4096
FIELDS = 50
# An element is refused once it is certain to be over the limit: at most two parser
# slices (or chunks, when those are smaller) after it passed it.
SLACK = 2 * JSON_SLICE_BYTES


async def _pieces(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def _split(body: bytes, size: int | None) -> list[bytes]:
    if size is None:
        return [body]
    return [body[i:i + size] for i in range(0, len(body), size)]


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never truly suspends, without an event loop (for Hypothesis)."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise AssertionError("the reader suspended: it should only await its chunk source")


async def _collect(reader: PayloadReader, settled: list[int] | None = None) -> list[Record]:
    out: list[Record] = []

    def on_settled() -> None:
        if settled is not None:
            settled.append(len(out))

    async for record in reader.records(on_settled):
        out.append(record)  # noqa: PERF401 - on_settled reads len(out) as records arrive
    return out


def read(body: bytes, media_type: MediaType, chunk: int | None = None, *,
         max_record_bytes: int = LIMIT, max_record_fields: int = FIELDS,
         settled: list[int] | None = None) -> list[Record]:
    reader = PayloadReader(_pieces(_split(body, chunk)), media_type, max_bytes=1 << 30,
                           max_record_bytes=max_record_bytes,
                           max_record_fields=max_record_fields)
    return drive(_collect(reader, settled))


def refusal(body: bytes, media_type: MediaType, chunk: int | None = None, **options: Any
            ) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        read(body, media_type, chunk, **options)
    return caught.value


def keys(count: int) -> dict[str, int]:
    return {f"k{i}": 0 for i in range(count)}


CHUNKINGS = [None, 7, 1000, 300_000]


# --- one element over the byte limit in a JSON body: 413, not held --------------------


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("element", [
    b'"' + b"x" * (LIMIT + SLACK + 1) + b'"',                 # a huge scalar record
    orjson.dumps({"s": "x" * (LIMIT + SLACK + 1)}),            # a huge field
    orjson.dumps([{"a": "b" * 30}] * ((LIMIT + SLACK) // 30)),  # a huge (wide, deep) record
], ids=["scalar", "field", "record"])
def test_a_json_element_over_the_limit_rejects_the_body(chunk: int | None, element: bytes) -> None:
    body = b'[{"a":1},' + element + b',{"a":2}]'
    error = refusal(body, JSON, chunk)
    assert (error.status, error.problem) == (413, PayloadProblem.RECORD_TOO_LARGE)
    assert error.title == "Record too large"
    assert error.detail.startswith("record 1 is larger than 4096 bytes")


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_a_long_envelope_head_rejects_the_body(chunk: int | None) -> None:
    body = orjson.dumps({"target": "t" * (LIMIT + SLACK), "records": [{"a": 1}]})
    error = refusal(body, JSON, chunk)
    assert error.status == 413
    assert 'envelope before "records"' in error.detail
    assert len(error.detail) < 100


def test_bytes_after_the_records_are_bounded_too() -> None:
    body = b'[{"a":1}]' + b" " * (LIMIT + SLACK + 1)
    assert "follow the records" in refusal(body, JSON).detail
    envelope = b'{"records":[{"a":1}], "' + b"k" * (LIMIT + SLACK + 1) + b'": 1}'
    assert "follow the records" in refusal(envelope, JSON).detail


def test_a_huge_string_is_never_built() -> None:
    pieces = _split(b'[{"s":"' + b"x" * (8 << 20) + b'"}]', 256 * 1024)
    reader = PayloadReader(_pieces(pieces), JSON, max_bytes=1 << 30, max_record_bytes=64 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError) as caught:
            drive(_collect(reader))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert peak < 1 << 20, peak  # the body is 8 MiB; the string would be too


@settings(max_examples=150, deadline=None)
@given(records=st.lists(st.dictionaries(st.text(max_size=8),
                                        st.text(max_size=900) | st.integers(-(2**53), 2**53),
                                        max_size=6), max_size=12),
       indent=st.booleans(), chunk=st.sampled_from(CHUNKINGS))
def test_elements_within_the_limits_are_never_refused(
    records: list[dict[str, Any]], indent: bool, chunk: int | None
) -> None:
    options = orjson.OPT_INDENT_2 if indent else 0
    records = [r for r in records if len(orjson.dumps(r, option=options)) < LIMIT - 1]
    body = b"[" + b",".join(orjson.dumps(r, option=options) for r in records) + b"]"
    assert read(body, JSON, chunk) == [RawRecord(i, r, False) for i, r in enumerate(records)]


# --- many fields: that record fails alone, in every framing ------------------------


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("value", [
    keys(FIELDS + 1),
    {"a": [0] * FIELDS},                                   # elements count, at any depth
    {"a": {"b": keys(FIELDS // 2)}, "c": keys(FIELDS // 2)},
], ids=["flat", "list", "nested"])
def test_a_record_over_the_field_limit_fails_alone(
    chunk: int | None, value: dict[str, Any]
) -> None:
    line = orjson.dumps(value)
    json_records = read(b'[{"a":1},' + line + b',{"a":2}]', JSON, chunk)
    ndjson_records = read(b'{"a":1}\n' + line + b'\n{"a":2}\n', NDJSON, chunk)
    for records in (json_records, ndjson_records):
        assert records[0] == RawRecord(0, {"a": 1}, False)
        assert records[2] == RawRecord(2, {"a": 2}, False)
        failed = records[1]
        assert isinstance(failed, MalformedRecord)
        assert failed.code == RecordCode.TOO_LARGE
        assert f"more than {FIELDS} fields" in failed.message


def test_a_record_at_the_field_limit_is_kept() -> None:
    value = {"a": [0] * (FIELDS - 1)}
    assert read(orjson.dumps([value]), JSON) == [RawRecord(0, value, False)]
    assert read(orjson.dumps(value) + b"\n", NDJSON) == [RawRecord(0, value, False)]


def test_a_csv_header_over_the_field_limit_rejects_the_body() -> None:
    header = ",".join(f"c{i}" for i in range(FIELDS + 1)).encode()
    error = refusal(header + b"\n" + b",".join([b"0"] * (FIELDS + 1)) + b"\n", CSV)
    assert error.status == 422
    assert f"more than {FIELDS} columns" in error.detail


@given(value=st.recursive(st.none() | st.integers(0, 9), lambda inner: st.lists(inner, max_size=5)
                          | st.dictionaries(st.text(max_size=3), inner, max_size=5),
                          max_leaves=40),
       limit=st.integers(1, 60))
def test_field_counting_agrees_with_a_plain_count(value: Any, limit: int) -> None:
    def count(node: Any) -> int:
        children = list(node.values()) if isinstance(node, dict) else (
            node if isinstance(node, list) else [])
        return len(children) + sum(count(child) for child in children)

    assert exceeds_fields(value, limit) == (count(value) > limit)
    if len(orjson.dumps(value)) <= fields_need_counting_past(limit):
        assert count(value) <= limit  # the shortcut never skips a record it should count


# --- the target is settled before any record is read --------------------------------


@pytest.mark.parametrize(("body", "media_type"), [
    (b'{"target":"t","records":[{"a":1},{"a":2}]}', JSON),
    (b'[{"a":1},{"a":2}]', JSON),
    (b'{"a":1}\n{"a":2}\n', NDJSON),
    (b"a\n1\n2\n", CSV),
])
def test_the_target_is_settled_before_the_first_record(body: bytes, media_type: MediaType) -> None:
    settled: list[int] = []
    assert len(read(body, media_type, 3, settled=settled)) == 2
    assert settled == [0]


def test_a_refusal_when_settled_stops_before_the_records() -> None:
    class Refused(Exception):
        pass

    def refuse() -> None:
        raise Refused

    body = b'{"target":"t","operation":"delete","records":[{"a": broken'
    reader = PayloadReader(_pieces([body]), JSON, max_bytes=1 << 30)
    with pytest.raises(Refused):
        drive(_drain(reader, refuse))
    assert reader.target == "t" and reader.operation == "delete"


async def _drain(reader: PayloadReader, on_settled: Any) -> None:
    async for _ in reader.records(on_settled):
        pass


def test_no_records_array_means_never_settled() -> None:
    settled: list[int] = []
    assert read(b"", JSON, settled=settled) == []
    assert settled == []


# --- generated hostile bodies: a PayloadError of 4xx or bounded records, nothing else ---


@st.composite
def hostile(draw: st.DrawFn) -> tuple[bytes, MediaType]:
    field = draw(st.sampled_from([0, 10, LIMIT - 200, LIMIT + 10, LIMIT + SLACK + 10, 500_000]))
    wide = draw(st.sampled_from([0, FIELDS - 10, FIELDS + 1, 5000]))
    target = draw(st.sampled_from(["t", "t" * 70, "t" * (LIMIT + SLACK + 1), "\u00fc" * 300]))
    media_type = draw(st.sampled_from([JSON, NDJSON, CSV]))
    record = {"s": "x" * field, **keys(wide)}
    if media_type == JSON:
        records = [record, {"a": 1}]
        if draw(st.booleans()):
            return orjson.dumps({"target": target, "records": records}), JSON
        return orjson.dumps(records), JSON
    if media_type == NDJSON:
        return orjson.dumps(record) + b"\n" + orjson.dumps({"a": 1}), NDJSON
    names = ",".join(record).encode()
    return names + b"\n" + ",".join(str(v) for v in record.values()).encode() + b"\n", CSV


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=hostile(), chunk=st.sampled_from(CHUNKINGS))
def test_hostile_bodies_get_a_short_4xx_or_bounded_records(
    case: tuple[bytes, MediaType], chunk: int | None
) -> None:
    body, media_type = case
    try:
        records = read(body, media_type, chunk)
    except PayloadError as error:
        assert error.status in (400, 413, 415, 422)
        assert len(error.detail) < 200
        return
    for record in records:
        if isinstance(record, RawRecord):
            assert not exceeds_fields(record.value, FIELDS)
            size = (sum(map(len, record.value.values())) if record.textual
                    else len(orjson.dumps(record.value)))
            assert size <= LIMIT + (SLACK if media_type == JSON else 0)
        else:
            assert record.code in (RecordCode.TOO_LARGE, RecordCode.MALFORMED)
            assert len(record.message) < 200


# --- long target names are never echoed whole ---------------------------------------


@pytest.fixture(scope="module")
def targets() -> dict[str, Target]:
    return load_targets(BUILTIN_TARGETS_DIR)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.text(min_size=1, max_size=3000), where=st.sampled_from(["query", "body", "both"]),
       operation=st.text(max_size=3000))
def test_long_target_names_are_echoed_short(
    targets: dict[str, Target], name: str, where: str, operation: str
) -> None:
    query = name if where != "body" else None
    body = name if where == "query" else "sensor_readings" if where == "both" else name
    try:
        resolve_target(targets, query, operation or None, body, None)
    except Problem as problem:
        assert problem.status == 422
        assert len(problem.detail) < 2 * ECHO_CHARS + 120, problem.detail


def test_echo_cuts_long_values_and_says_how_long() -> None:
    assert echo("short") == "'short'"
    cut = echo("x" * 5_000_000)
    assert cut.startswith("'" + "x" * ECHO_CHARS + "'…")
    assert cut.endswith("(5000000 characters)")


def test_problem_details_are_capped() -> None:
    problem = Problem(422, "T", "d" * 10_000, slug=ProblemType.UNKNOWN_TARGET)
    assert len(problem.detail) == MAX_DETAIL_CHARS + 1


# --- one record alone over a Kafka message fails alone -----------------------------


def test_a_record_alone_over_one_kafka_message_fails_alone(targets: dict[str, Target]) -> None:
    codec = EnvelopeCodec(targets)
    huge = Envelope("job", "sensor_readings", "insert",
                    [Item(7, ("x" * (MAX_ENVELOPE_BYTES + 1), 1.0, None))])
    parts = codec.encode_bounded(huge, MAX_ENVELOPE_BYTES)
    assert len(parts) == 1 and len(parts[0][1]) > MAX_ENVELOPE_BYTES
    target = targets["sensor_readings"]
    part, data = fail_alone_if_oversize(codec, *parts[0], target)
    assert len(data) < 1000 + 4096  # the failure, and the first 4 KiB of the record for it
    decoded = codec.decode(data)
    (item,) = decoded.items
    assert (item.index, item.row, item.error_code) == (7, None, RecordCode.TOO_LARGE)
    assert decoded.received[7].truncated
    small = Envelope("job", "sensor_readings", "insert", [Item(8, ("x", 1.0, None))])
    encoded = codec.encode(small)
    assert fail_alone_if_oversize(codec, small, encoded, target) == (small, encoded)
