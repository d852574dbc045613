"""Submission helpers: picking target and operation, the on-disk envelope spool, body chunks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from schemas.envelope import MAX_ENVELOPE_BYTES, Envelope, EnvelopeCodec, Item
from schemas.received import RecordText
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_targets
from web.idempotency import Fingerprint
from web.payloads import MediaType, PayloadReader
from web.payloads.records import PayloadProblem
from web.problems import Problem, ProblemType
from web.submission import (
    FAILED_TEXT_PER_ENVELOPE,
    Spool,
    SubmissionContext,
    _broker_problem,
    _failure_reason,
    body_chunks,
    fail_alone_if_oversize,
    resolve_target,
    spool_payload,
)


@pytest.fixture(scope="module")
def targets() -> dict[str, Target]:
    loaded = load_targets(BUILTIN_TARGETS_DIR)
    # A second name, to check the list of known targets is sorted.
    return {"zones": loaded["sensor_readings"], **loaded}


# --- resolve_target ----------------------------------------------------------------


def test_query_string_alone(targets: dict[str, Target]) -> None:
    target, operation = resolve_target(targets, "sensor_readings", "upsert", None, None)
    assert target is targets["sensor_readings"]
    assert operation == "upsert"


def test_body_alone(targets: dict[str, Target]) -> None:
    target, operation = resolve_target(targets, None, None, "sensor_readings", "delete")
    assert target is targets["sensor_readings"]
    assert operation == "delete"


def test_query_and_body_may_each_give_one_part(targets: dict[str, Target]) -> None:
    target, operation = resolve_target(targets, "sensor_readings", None, None, "upsert")
    assert (target.name, operation) == ("sensor_readings", "upsert")
    target, operation = resolve_target(targets, None, "delete", "sensor_readings", None)
    assert (target.name, operation) == ("sensor_readings", "delete")


def test_agreeing_query_and_body(targets: dict[str, Target]) -> None:
    target, operation = resolve_target(
        targets, "sensor_readings", "upsert", "sensor_readings", "upsert"
    )
    assert (target.name, operation) == ("sensor_readings", "upsert")


@pytest.mark.parametrize("empty", [None, ""])
def test_operation_defaults_to_insert(targets: dict[str, Target], empty: str | None) -> None:
    assert resolve_target(targets, "sensor_readings", empty, None, empty)[1] == "insert"


def test_conflicting_targets(targets: dict[str, Target]) -> None:
    with pytest.raises(Problem) as caught:
        resolve_target(targets, "sensor_readings", None, "zones", None)
    problem = caught.value
    assert problem.status == 422
    assert problem.slug == "conflicting-parameters"
    assert problem.title == "Conflicting parameters"
    assert problem.detail == (
        "target is 'sensor_readings' in the query string but 'zones' in the body"
    )


def test_conflicting_operations(targets: dict[str, Target]) -> None:
    with pytest.raises(Problem) as caught:
        resolve_target(targets, "sensor_readings", "insert", None, "delete")
    assert caught.value.status == 422
    assert caught.value.slug == "conflicting-parameters"
    assert "operation is 'insert'" in caught.value.detail
    assert "'delete' in the body" in caught.value.detail


def test_conflict_is_reported_before_an_unknown_target(targets: dict[str, Target]) -> None:
    with pytest.raises(Problem) as caught:
        resolve_target(targets, "nope", None, "other", None)
    assert caught.value.slug == "conflicting-parameters"


@pytest.mark.parametrize(
    ("query_target", "body_target"), [(None, None), ("", None), (None, ""), ("", "")]
)
def test_missing_target(
    targets: dict[str, Target], query_target: str | None, body_target: str | None
) -> None:
    with pytest.raises(Problem) as caught:
        resolve_target(targets, query_target, "insert", body_target, None)
    assert caught.value.status == 422
    assert caught.value.slug == "missing-target"
    assert caught.value.title == "Missing target"


def test_unknown_target_lists_the_known_ones(targets: dict[str, Target]) -> None:
    with pytest.raises(Problem) as caught:
        resolve_target(targets, "sensor_reading", None, None, None)
    problem = caught.value
    assert problem.status == 422
    assert problem.slug == "unknown-target"
    assert problem.detail == "no target named 'sensor_reading'"
    assert problem.extra == {"known_targets": ["sensor_readings", "zones"]}


@pytest.mark.parametrize("operation", ["merge", "INSERT", "truncate"])
def test_unknown_operation(targets: dict[str, Target], operation: str) -> None:
    with pytest.raises(Problem) as caught:
        resolve_target(targets, "sensor_readings", operation, None, None)
    assert caught.value.status == 422
    assert caught.value.slug == "unknown-operation"
    assert caught.value.detail == "operation must be one of insert, upsert, delete"


def test_unknown_operation_from_the_body(targets: dict[str, Target]) -> None:
    with pytest.raises(Problem) as caught:
        resolve_target(targets, None, None, "sensor_readings", "replace")
    assert caught.value.slug == "unknown-operation"


# --- Spool -------------------------------------------------------------------------


def test_spool_replays_in_order_with_content(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        frames = [(3, b'{"v":1}'), (0, b""), (3, b"\x00\xff binary \n"), (255, b"x" * 70_000)]
        for n, (partition, data) in enumerate(frames):
            spool.append(partition, data, n)
        assert spool.envelopes == 4
        assert list(spool.replay()) == [(p, n, d) for n, (p, d) in enumerate(frames)]
    finally:
        spool.close()


def test_spool_can_be_replayed_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        spool.append(1, b"one", 1)
        spool.append(2, b"two", 1)
        first = list(spool.replay())
        assert list(spool.replay()) == first == [(1, 1, b"one"), (2, 1, b"two")]
    finally:
        spool.close()


def test_empty_spool_replays_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        assert spool.envelopes == 0
        assert list(spool.replay()) == []
    finally:
        spool.close()


def test_spool_creates_its_directory(tmp_path: Path) -> None:
    directory = tmp_path / "spool" / "nested"
    spool = Spool(directory)
    try:
        assert directory.is_dir()
        spool.append(0, b"data", 1)
        assert list(spool.replay()) == [(0, 1, b"data")]
    finally:
        spool.close()


def test_spools_are_independent(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)
    try:
        first.append(0, b"first", 1)
        second.append(1, b"second", 1)
        assert list(first.replay()) == [(0, 1, b"first")]
        assert list(second.replay()) == [(1, 1, b"second")]
    finally:
        first.close()
        second.close()


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(0, b"data", 1)
    spool.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError):
        list(spool.replay())


# --- body_chunks -------------------------------------------------------------------


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_body_chunks_pass_through_and_feed_the_fingerprint() -> None:
    fingerprint = Fingerprint("/v1/bulk-operations", "sensor_readings")
    seen = [chunk async for chunk in body_chunks(_chunks(b"[1,", b"2]"), fingerprint)]
    assert seen == [b"[1,", b"2]"]
    whole = Fingerprint("/v1/bulk-operations", "sensor_readings")
    whole.update(b"[1,2]")
    assert fingerprint.hexdigest() == whole.hexdigest()


async def test_body_chunks_without_fingerprint() -> None:
    assert [c async for c in body_chunks(_chunks(b"a", b"b"), None)] == [b"a", b"b"]


def _raised_from(problem: Problem, cause: BaseException) -> Problem:
    problem.__cause__ = cause
    return problem


@pytest.mark.parametrize(("error", "reason"), [
    (Problem(408, "Submission timed out", "late", slug=ProblemType.SUBMISSION_TIMEOUT),
     "the payload was refused: Submission timed out"),
    (Problem(413, "Payload too large", "big", slug=PayloadProblem.TOO_LARGE),
     "the payload was refused: Payload too large"),
    (_raised_from(_broker_problem(MessageSizeTooLargeError(), "j"), MessageSizeTooLargeError()),
     "a message was too large for the broker"),
    (_raised_from(_broker_problem(KafkaConnectionError(), "j"), KafkaConnectionError()),
     "broker unavailable during submission"),
    (ConnectionResetError("Connection lost"), "the client went away before the payload was received whole"),
    (asyncio.CancelledError(), "the client went away before the payload was received whole"),
    (RuntimeError("boom"), "the submission failed"),
])
def test_a_recorded_jobs_failure_reason_names_the_cause_never_the_records(
        error: BaseException, reason: str) -> None:
    assert _failure_reason(error) == reason


# --- failed records carry the record as received --------------------------------------------


class _Outlet:
    """Collects the envelopes a submission makes, decoded."""

    def __init__(self, codec: EnvelopeCodec) -> None:
        self.codec = codec
        self.envelopes: list[Envelope] = []
        self.sizes: list[int] = []

    async def add(self, target: Target, operation: str, partition: int, data: bytes,
                  records: int) -> None:
        self.envelopes.append(self.codec.decode(data))
        self.sizes.append(len(data))


async def _spooled(targets: dict[str, Target], body: bytes, media_type: MediaType, *,
                   partitions: int = 4, batch_size: int = 1000,
                   **limits: int) -> _Outlet:
    codec = EnvelopeCodec(targets)
    ctx = SubmissionContext(None, None, codec, targets, "records",  # type: ignore[arg-type]
                            partitions, batch_size, Path("/nonexistent"))
    outlet = _Outlet(codec)
    reader = PayloadReader(_chunks(body), media_type, max_bytes=1 << 30, **limits)
    await spool_payload(ctx, reader, "job", "sensor_readings", "insert", outlet)  # type: ignore[arg-type]
    return outlet


def _received(outlet: _Outlet) -> dict[int, RecordText]:
    found: dict[int, RecordText] = {}
    for envelope in outlet.envelopes:
        failed = {item.index for item in envelope.items if item.row is None}
        assert set(envelope.received) == failed, "every failed item has its record, no other"
        found.update(envelope.received)
    return found


GOOD = b'{"sensor_id":"s-1","value":1.5,"sampled_at":"2023-10-01T12:00:00Z"}'


async def test_ndjson_failures_carry_their_line(targets: dict[str, Target]) -> None:
    wrong = b'{"sensor_id":"s-2","value":"high","sampled_at":"2023-10-01T12:00:00Z"}'
    long = b'{"sensor_id":"' + b"x" * 6000 + b'","value":1,"sampled_at":0}'
    body = b"\n".join([GOOD, b'{"sensor_id":', wrong + b"\r", long, b"[1,2]", GOOD]) + b"\n"
    outlet = await _spooled(targets, body, MediaType.NDJSON, max_record_bytes=5000)
    assert _received(outlet) == {
        1: RecordText('{"sensor_id":', False),
        2: RecordText(wrong.decode(), False),
        3: RecordText(long[:4096].decode(), True),
        4: RecordText("[1,2]", False),
    }


async def test_csv_failures_carry_their_row_as_csv_text(targets: dict[str, Target]) -> None:
    body = (b"sensor_id,value,sampled_at\r\n"
            b"s-1,1.5,2023-10-01T12:00:00Z\r\n"
            b"s-2,high,2023-10-01T12:00:00Z\r\n"
            b"s-3,1.5\r\n"
            b'"s-4\nmulti",x,0\r\n')
    outlet = await _spooled(targets, body, MediaType.CSV)
    assert _received(outlet) == {
        1: RecordText("s-2,high,2023-10-01T12:00:00Z", False),
        2: RecordText("s-3,1.5", False),
        3: RecordText('"s-4\nmulti",x,0', False),
    }


async def test_json_failures_carry_their_element_re_serialised(targets: dict[str, Target]) -> None:
    body = b'[{"sensor_id": "s-1", "value": 1.5, "sampled_at": 0}, {"sensor_id": 7}, "text"]'
    outlet = await _spooled(targets, body, MediaType.JSON)
    assert _received(outlet) == {1: RecordText('{"sensor_id":7}', False),
                                 2: RecordText('"text"', False)}


async def test_a_payload_of_failures_holds_a_bounded_text_per_envelope(
        targets: dict[str, Target]) -> None:
    """Every record fails, each with 4 KiB kept: envelopes are made by the text they hold, not
    only by record count, so neither the buffers nor one envelope grow with the payload."""
    line = b'{"sensor_id":"' + b"y" * 5000 + b'","value":"x","sampled_at":0}\n'
    outlet = await _spooled(targets, line * 2000, MediaType.NDJSON, partitions=2)
    received = _received(outlet)
    assert sorted(received) == list(range(2000))
    assert all(text.truncated and len(text.text) == 4096 for text in received.values())
    for envelope in outlet.envelopes:
        held = sum(len(text.text) for text in envelope.received.values())
        assert held <= FAILED_TEXT_PER_ENVELOPE + 4096
    assert max(outlet.sizes) <= MAX_ENVELOPE_BYTES


def test_a_record_too_large_for_kafka_fails_with_its_columns_as_json(
        targets: dict[str, Target]) -> None:
    codec = EnvelopeCodec(targets)
    sampled = datetime(2023, 10, 1, 12, 0, tzinfo=UTC)
    part = Envelope("job", "sensor_readings", "insert", [Item(5, ("z" * 1_000_000, 1.0, sampled))])
    failed, data = fail_alone_if_oversize(codec, part, codec.encode(part), targets["sensor_readings"])
    assert failed.items == [Item(5, None, "record_too_large", failed.items[0].error_message)]
    text = failed.received[5]
    assert text.truncated and text.text.startswith('{"sensor_id":"zzz')
    assert codec.decode(data) == failed
