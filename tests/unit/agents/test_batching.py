"""Batching helpers: grouping envelopes into writes and shaping results-topic messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.apply.batching import chunk_by_records, outcome_documents, result_messages
from app.store.sink import BatchResult
from schemas.envelope import Envelope, Item
from schemas.outcomes import Outcome, blocks_of
from schemas.vocabulary import RecordStatus

SUCCEEDED, FAILED, DUPLICATE = RecordStatus.SUCCEEDED, RecordStatus.FAILED, RecordStatus.DUPLICATE

CREATED = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


def _envelope(records: int, job_id: str = "job", **kwargs: Any) -> Envelope:
    items = [Item(i, ("s", 0.0, CREATED)) for i in range(records)]
    return Envelope(job_id, "sensor_readings", kwargs.pop("operation", "insert"), items, **kwargs)


def _sizes(chunks: list[list[Envelope]]) -> list[list[int]]:
    return [[len(e.items) for e in chunk] for chunk in chunks]


# --- chunk_by_records --------------------------------------------------------------


def test_no_envelopes_no_chunks() -> None:
    assert chunk_by_records([], 10) == []


def test_whole_envelopes_fill_up_to_the_limit() -> None:
    envelopes = [_envelope(n) for n in (3, 3, 3, 1)]
    chunks = chunk_by_records(envelopes, 6)
    assert _sizes(chunks) == [[3, 3], [3, 1]]
    assert chunks[0][0] is envelopes[0]
    assert chunks[1][1] is envelopes[3]


def test_exactly_the_limit_stays_in_one_chunk() -> None:
    assert _sizes(chunk_by_records([_envelope(n) for n in (2, 3, 5)], 10)) == [[2, 3, 5]]


def test_an_envelope_is_never_split() -> None:
    assert _sizes(chunk_by_records([_envelope(n) for n in (4, 4)], 5)) == [[4], [4]]


def test_an_oversized_envelope_gets_a_chunk_of_its_own() -> None:
    envelopes = [_envelope(n) for n in (2, 10, 2, 2)]
    assert _sizes(chunk_by_records(envelopes, 5)) == [[2], [10], [2, 2]]


def test_an_oversized_first_envelope() -> None:
    assert _sizes(chunk_by_records([_envelope(n) for n in (12, 1)], 5)) == [[12], [1]]


def test_empty_envelopes_ride_along() -> None:
    assert _sizes(chunk_by_records([_envelope(n) for n in (5, 0, 1)], 5)) == [[5, 0], [1]]


@settings(max_examples=150, deadline=None, database=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=30), max_size=30),
    limit=st.integers(min_value=1, max_value=40),
)
def test_chunking_properties(sizes: list[int], limit: int) -> None:
    envelopes = [_envelope(n, job_id=f"job-{i}") for i, n in enumerate(sizes)]
    chunks = chunk_by_records(envelopes, limit)

    flat = [e for chunk in chunks for e in chunk]
    assert len(flat) == len(envelopes)
    assert all(a is b for a, b in zip(flat, envelopes, strict=True))  # order kept, none split

    for chunk in chunks:
        assert chunk
        total = sum(len(e.items) for e in chunk)
        assert total <= limit or len(chunk) == 1
    # Greedy: the next chunk's first envelope would not have fitted.
    for current, following in zip(chunks, chunks[1:], strict=False):
        assert sum(len(e.items) for e in current) + len(following[0].items) > limit


# --- result_messages ---------------------------------------------------------------


def _decode(messages: list[tuple[str, bytes]]) -> dict[str, dict[str, Any]]:
    decoded = {job_id: orjson.loads(value) for job_id, value in messages}
    assert len(decoded) == len(messages), "one message per job"
    return decoded


def _snapshot(job_id: str, **overrides: Any) -> dict[str, Any]:
    snapshot: dict[str, Any] = {
        "job_id": job_id, "target": "sensor_readings", "operation": "insert",
        "source": "http", "state": "processing", "records_received": 4,
        "succeeded": 2, "failed": 1, "duplicates": 0, "created_at": CREATED,
        "accepted_at": CREATED, "updated_at": CREATED, "completed_at": None,
    }
    snapshot.update(overrides)
    return snapshot


KEY = '{"sensor_id":"s-1","sampled_at":"2024-05-01T12:00:00Z"}'


def test_one_message_per_job_with_sorted_outcomes() -> None:
    envelopes = [_envelope(2, "job-a"), _envelope(2, "job-b", operation="upsert"),
                 _envelope(1, "job-a")]
    result = BatchResult.of(
        outcomes=[
            Outcome("job-a", 3, SUCCEEDED, KEY),
            Outcome("job-b", 1, FAILED, None, "wrong_type", "field 'value': expected double"),
            Outcome("job-a", 1, DUPLICATE, KEY),
            Outcome("job-b", 0, SUCCEEDED, KEY),
            Outcome("job-a", 2, FAILED, KEY, "23505", "a row with this key already exists"),
        ],
        jobs={"job-a": _snapshot("job-a"), "job-b": _snapshot("job-b", operation="upsert")},
    )
    messages = result_messages(result, envelopes)
    assert sorted(job_id for job_id, _ in messages) == ["job-a", "job-b"]
    docs = _decode(messages)

    a = docs["job-a"]
    assert a["job_id"] == "job-a"
    assert a["target"] == "sensor_readings"
    assert a["operation"] == "insert"
    assert a["source"] is None
    assert [o["index"] for o in a["outcomes"]] == [1, 2, 3]
    assert [o["status"] for o in a["outcomes"]] == [DUPLICATE, FAILED, SUCCEEDED]
    assert a["outcomes"][1] == {
        "index": 2, "status": "failed",
        "key": {"sensor_id": "s-1", "sampled_at": "2024-05-01T12:00:00Z"},
        "code": "23505", "message": "a row with this key already exists",
    }

    b = docs["job-b"]
    assert b["operation"] == "upsert"
    assert b["outcomes"] == [
        {"index": 0, "status": "succeeded",
         "key": {"sensor_id": "s-1", "sampled_at": "2024-05-01T12:00:00Z"},
         "code": None, "message": None},
        {"index": 1, "status": "failed", "key": None,
         "code": "wrong_type", "message": "field 'value': expected double"},
    ]


def test_key_is_embedded_as_a_json_object() -> None:
    result = BatchResult.of(outcomes=[Outcome("job", 0, SUCCEEDED, KEY)])
    ((_, value),) = result_messages(result, [_envelope(1)])
    assert b'"key":{"sensor_id":"s-1"' in value
    key = orjson.loads(value)["outcomes"][0]["key"]
    assert isinstance(key, dict)
    assert key == orjson.loads(KEY)


def test_replayed_outcomes_are_published_again_in_index_order() -> None:
    result = BatchResult.of(
        outcomes=[Outcome("job", 4, SUCCEEDED, KEY), Outcome("job", 0, SUCCEEDED, KEY)],
        replayed=[Outcome("job", 3, FAILED, None, "wrong_type", "bad"),
                  Outcome("job", 1, SUCCEEDED, KEY)],
    )
    doc = _decode(result_messages(result, [_envelope(5)]))["job"]
    assert [o["index"] for o in doc["outcomes"]] == [0, 1, 3, 4]
    assert doc["outcomes"][2]["code"] == "wrong_type"


def test_a_fully_replayed_job_still_gets_its_message() -> None:
    result = BatchResult.of(replayed=[Outcome("job", 0, SUCCEEDED, KEY)])
    docs = _decode(result_messages(result, [_envelope(1)]))
    assert [o["index"] for o in docs["job"]["outcomes"]] == [0]
    assert docs["job"]["job"] is None


def test_producer_envelopes_carry_their_source_and_offsets() -> None:
    job_id = "sluice.input.sensor_readings:2"
    envelope = _envelope(1, job_id, source_topic="sluice.input.sensor_readings",
                         source_partition=2, operation="upsert")
    result = BatchResult.of(outcomes=[Outcome(job_id, 17, SUCCEEDED, KEY),
                                   Outcome(job_id, 9, FAILED, None, "wrong_type", "m")])
    doc = _decode(result_messages(result, [envelope]))[job_id]
    assert doc["source"] == {"topic": "sluice.input.sensor_readings", "partition": 2}
    assert doc["operation"] == "upsert"
    assert [(o["index"], o["offset"]) for o in doc["outcomes"]] == [(9, 9), (17, 17)]


def test_http_outcomes_have_no_offset() -> None:
    result = BatchResult.of(outcomes=[Outcome("job", 0, SUCCEEDED, KEY)])
    doc = _decode(result_messages(result, [_envelope(1)]))["job"]
    assert "offset" not in doc["outcomes"][0]


@pytest.mark.parametrize("from_kafka", [False, True])
def test_outcome_document(from_kafka: bool) -> None:
    (doc,) = outcome_documents(blocks_of([Outcome("job", 5, DUPLICATE, KEY)])[0],
                               from_kafka=from_kafka)
    decoded = orjson.loads(orjson.dumps(doc))
    expected = {"index": 5, "status": "duplicate", "key": orjson.loads(KEY),
                "code": None, "message": None}
    if from_kafka:
        expected["offset"] = 5
    assert decoded == expected


def test_source_partition_zero() -> None:
    envelope = _envelope(1, "in:0", source_topic="in", source_partition=0)
    result = BatchResult.of(outcomes=[Outcome("in:0", 0, SUCCEEDED, KEY)])
    assert _decode(result_messages(result, [envelope]))["in:0"]["source"] == {
        "topic": "in", "partition": 0
    }


def test_job_snapshot_is_included_with_datetimes_serialised() -> None:
    completed = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
    snapshot = _snapshot("job", state="completed_with_errors", completed_at=completed)
    result = BatchResult.of(outcomes=[Outcome("job", 0, SUCCEEDED, KEY)], jobs={"job": snapshot})
    job = _decode(result_messages(result, [_envelope(1)]))["job"]["job"]
    assert job["state"] == "completed_with_errors"
    assert job["records_received"] == 4
    assert job["succeeded"] == 2
    assert job["failed"] == 1
    assert job["completed_at"] is not None
    assert datetime.fromisoformat(job["created_at"]) == CREATED
    assert datetime.fromisoformat(job["completed_at"]) == completed
    assert set(job) == set(snapshot)


def test_jobs_without_outcomes_publish_nothing() -> None:
    assert result_messages(BatchResult(), [_envelope(3)]) == []


@pytest.mark.parametrize("key", [None, ""])
def test_missing_key_is_null(key: str | None) -> None:
    result = BatchResult.of(outcomes=[Outcome("job", 0, FAILED, key, "c", "m")])
    doc = _decode(result_messages(result, [_envelope(1)]))["job"]
    assert doc["outcomes"][0]["key"] is None


def test_outcomes_of_one_job_are_split_to_fit_a_message() -> None:
    envelope = _envelope(40)
    long_key = orjson.dumps({"sensor_id": "k" * 1_000}).decode()
    result = BatchResult.of(outcomes=[
        Outcome(envelope.job_id, i, "succeeded", long_key) for i in range(40)
    ])
    messages = result_messages(result, [envelope], max_bytes=10_000)
    assert len(messages) > 1
    assert all(len(value) <= 10_000 for _, value in messages)
    indexes = [o["index"] for _, value in messages for o in orjson.loads(value)["outcomes"]]
    assert indexes == list(range(40))


def test_failed_outcomes_carry_their_record_on_the_results_topic() -> None:
    block = blocks_of([Outcome("job", 0, SUCCEEDED, KEY),
                       Outcome("job", 1, FAILED, None, "wrong_type", "m", '{"v":"x"}'),
                       Outcome("job", 2, FAILED, None, "malformed_record", "m", "{" * 4096, True)])[0]
    docs = [orjson.loads(orjson.dumps(doc)) for doc in outcome_documents(block, from_kafka=False)]
    assert "record" not in docs[0] and "record_truncated" not in docs[0]
    assert docs[1]["record"] == '{"v":"x"}' and "record_truncated" not in docs[1]
    assert docs[2]["record"] == "{" * 4096 and docs[2]["record_truncated"] is True
