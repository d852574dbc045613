"""The pure parts of the sink: write generations, row error messages, terminal states."""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.sink import TERMINAL_STATES, _Pending, _row_error_message, generations
from schemas.envelope import Envelope

ENVELOPE = Envelope("job-1", "sensor_readings", "upsert", [])


def _pending(index: int, key: tuple[Any, ...]) -> _Pending:
    return _Pending(ENVELOPE, index, (*key, float(index)), index.to_bytes(4, "big"), key)


def _shape(result: list[list[_Pending]]) -> list[list[int]]:
    return [[p.index for p in generation] for generation in result]


# --- generations -------------------------------------------------------------------


def test_no_records_no_generations() -> None:
    assert generations([]) == []


def test_distinct_keys_fit_one_generation_in_order() -> None:
    records = [_pending(i, (f"k{i}",)) for i in range(5)]
    result = generations(records)
    assert _shape(result) == [[0, 1, 2, 3, 4]]
    assert result[0][0] is records[0]


def test_nth_record_of_a_key_lands_in_generation_n() -> None:
    keys = ["a", "b", "a", "c", "a", "b", "d"]
    records = [_pending(i, (k,)) for i, k in enumerate(keys)]
    assert _shape(generations(records)) == [
        [0, 1, 3, 6],  # first a, first b, c, d
        [2, 5],  # second a, second b
        [4],  # third a
    ]


def test_one_key_repeated_gives_one_record_per_generation() -> None:
    records = [_pending(i, ("same", 1)) for i in range(4)]
    assert _shape(generations(records)) == [[0], [1], [2], [3]]


def test_composite_keys_compare_as_whole_tuples() -> None:
    records = [
        _pending(0, ("s", 1)),
        _pending(1, ("s", 2)),
        _pending(2, ("t", 1)),
        _pending(3, ("s", 1)),
    ]
    assert _shape(generations(records)) == [[0, 1, 2], [3]]


def test_only_the_key_decides() -> None:
    # Same key, different rows and digests: still separate generations.
    first = _Pending(ENVELOPE, 0, ("a", 1.0), b"x", ("a",))
    second = _Pending(ENVELOPE, 1, ("a", 2.0), b"y", ("a",))
    assert generations([first, second]) == [[first], [second]]


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from("xyz")), max_size=40))
def test_generations_partition_the_input(keys: list[tuple[int, str]]) -> None:
    records = [_pending(i, key) for i, key in enumerate(keys)]
    result = generations(records)

    flat = [p for generation in result for p in generation]
    assert sorted(p.index for p in flat) == list(range(len(records)))
    assert all(any(p is r for r in records) for p in flat)

    for generation in result:
        assert generation, "no empty generation"
        generation_keys = [p.key for p in generation]
        assert len(set(generation_keys)) == len(generation_keys)
        indexes = [p.index for p in generation]
        assert indexes == sorted(indexes)

    # Records of one key appear in payload order across generations, one per generation.
    for key, count in Counter(keys).items():
        positions = [
            (n, p.index) for n, generation in enumerate(result) for p in generation
            if p.key == key
        ]
        assert [n for n, _ in positions] == list(range(count))
        assert [i for _, i in positions] == sorted(i for _, i in positions)

    assert len(result) == max(Counter(keys).values(), default=0)


# --- _row_error_message ------------------------------------------------------------


def test_row_error_message_drops_the_detail() -> None:
    error = asyncpg.PostgresError.new(
        {"M": "value too long for type character varying(3)",
         "D": "Failing row contains (secret-value).", "C": "22001"}
    )
    assert "secret-value" in str(error)  # the full text would leak the record
    assert _row_error_message(error) == "value too long for type character varying(3)"


def test_row_error_message_for_a_unique_violation() -> None:
    error = asyncpg.PostgresError.new(
        {"M": 'duplicate key value violates unique constraint "t_pkey"',
         "D": "Key (id)=(42) already exists.", "C": "23505"}
    )
    assert isinstance(error, asyncpg.UniqueViolationError)
    assert _row_error_message(error) == 'duplicate key value violates unique constraint "t_pkey"'


@pytest.mark.parametrize(
    "error",
    [asyncpg.exceptions.CheckViolationError(), asyncpg.exceptions.DataError("positional only")],
)
def test_row_error_message_falls_back_to_the_class_name(error: asyncpg.PostgresError) -> None:
    assert _row_error_message(error) == type(error).__name__


# --- TERMINAL_STATES ---------------------------------------------------------------


def test_terminal_states() -> None:
    assert TERMINAL_STATES == frozenset({"completed", "completed_with_errors", "failed", "aborted"})
    assert isinstance(TERMINAL_STATES, frozenset)
    for live in ("receiving", "processing", "accepted"):
        assert live not in TERMINAL_STATES
