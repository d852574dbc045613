"""Outcome blocks: built record by record, counted, split by span, read back record by record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.outcomes import (
    MAX_BLOCK_SPAN,
    BlockBuilder,
    Outcome,
    blocks_of,
    count_statuses,
)
from schemas.received import RecordText
from schemas.vocabulary import RecordStatus

statuses = st.sampled_from(list(RecordStatus))
outcome_lists = st.lists(
    st.tuples(st.integers(0, 3 * MAX_BLOCK_SPAN), statuses, st.booleans()), max_size=60,
    unique_by=lambda t: t[0])


def _outcomes(job: str, drawn: list[tuple[int, RecordStatus, bool]]) -> list[Outcome]:
    return [Outcome(job, i, s, f'{{"id":{i}}}', "c" if coded else None, f"m{i}" if coded else None)
            for i, s, coded in drawn]


@given(outcome_lists, outcome_lists)
def test_blocks_give_back_every_outcome_in_index_order_per_job(
        a: list[tuple[int, RecordStatus, bool]], b: list[tuple[int, RecordStatus, bool]]) -> None:
    outcomes = _outcomes("a", a) + _outcomes("b", b)
    blocks = blocks_of(outcomes)
    for block in blocks:
        assert block.indexes == sorted(block.indexes)
        assert block.last - block.first <= MAX_BLOCK_SPAN
    back = [o for block in blocks for o in block.outcomes()]
    assert sorted(back) == sorted(outcomes)
    for job in ("a", "b"):
        listed = [o.index for o in back if o.job_id == job]
        assert listed == sorted(listed)
    counts = count_statuses(blocks)
    for job in ("a", "b"):
        for status in RecordStatus:
            expected = sum(1 for o in outcomes if o.job_id == job and o.status == status)
            assert counts.get(job, {}).get(status, 0) == expected


def test_a_settled_record_keeps_its_place_and_gets_its_code() -> None:
    builder = BlockBuilder("j")
    first = builder.add(3, RecordStatus.SUCCEEDED, '{"id":3}')
    builder.add(5, RecordStatus.SUCCEEDED, '{"id":5}')
    builder.settle(first, RecordStatus.FAILED, "23505", "a row with this key already exists")
    (block,) = builder.blocks()
    assert list(block.outcomes()) == [
        Outcome("j", 3, RecordStatus.FAILED, '{"id":3}', "23505", "a row with this key already exists"),
        Outcome("j", 5, RecordStatus.SUCCEEDED, '{"id":5}'),
    ]


def test_a_block_without_codes_stores_none_for_them() -> None:
    (block,) = blocks_of([Outcome("j", 0, RecordStatus.SUCCEEDED, None)])
    assert block.codes is None and block.messages is None
    assert BlockBuilder("j").blocks() == []


# --- the record as received, on failed outcomes ------------------------------------------


def test_a_block_without_records_stores_none_for_them() -> None:
    (block,) = blocks_of([Outcome("j", 0, RecordStatus.FAILED, None, "wrong_type", "m")])
    assert block.records is None and block.records_truncated is None


def test_failed_records_keep_their_text_through_blocks_sorting_and_splitting() -> None:
    builder = BlockBuilder("j")
    far = MAX_BLOCK_SPAN + 10
    builder.add(far, RecordStatus.FAILED, None, "malformed_record", "m",
                RecordText("x" * 4096, True))
    builder.add(0, RecordStatus.SUCCEEDED, '{"id":0}')
    builder.add(1, RecordStatus.FAILED, None, "wrong_type", "m", RecordText('{"id":"x"}'))
    first, second = builder.blocks()
    assert first.records == [None, '{"id":"x"}'] and first.records_truncated is None
    assert second.records == ["x" * 4096] and second.records_truncated == [True]
    assert [(o.index, o.record, o.record_truncated) for b in (first, second) for o in b.outcomes()] == [
        (0, None, False), (1, '{"id":"x"}', False), (far, "x" * 4096, True)]


def test_a_record_failed_by_the_write_gets_its_text_when_settled() -> None:
    builder = BlockBuilder("j")
    first = builder.add(3, RecordStatus.SUCCEEDED, '{"id":3}')
    builder.add(5, RecordStatus.SUCCEEDED, '{"id":5}')
    builder.settle(first, RecordStatus.FAILED, "23505", "exists", RecordText('{"id":3,"v":1}'))
    (block,) = builder.blocks()
    assert list(block.outcomes()) == [
        Outcome("j", 3, RecordStatus.FAILED, '{"id":3}', "23505", "exists", '{"id":3,"v":1}'),
        Outcome("j", 5, RecordStatus.SUCCEEDED, '{"id":5}'),
    ]


def test_outcomes_with_records_make_blocks_that_give_them_back() -> None:
    outcomes = [Outcome("j", 0, RecordStatus.FAILED, None, "c", "m", "r0", True),
                Outcome("j", 1, RecordStatus.SUCCEEDED, '{"id":1}'),
                Outcome("j", 2, RecordStatus.FAILED, None, "c", "m", "r2")]
    (block,) = blocks_of(outcomes)
    assert block.records == ["r0", None, "r2"]
    assert block.records_truncated == [True, False, False]
    assert list(block.outcomes()) == outcomes
