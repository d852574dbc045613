"""plan_writes: every record's outcome in log order, and at most one net action per key.

The table tests follow the semantics table of ``schemas.write_plan`` row by row; the
sequence tests walk records of one key through several states; the property test checks
the plan against a reference model that applies each record to a dict, one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.vocabulary import Operation, RecordStatus
from schemas.write_plan import (
    UNIQUE_VIOLATION,
    ExistingRows,
    Step,
    Verdict,
    WritePlan,
    plan_writes,
)

INSERT, UPSERT, DELETE = Operation.INSERT, Operation.UPSERT, Operation.DELETE
SUCCEEDED, DUPLICATE, FAILED = RecordStatus.SUCCEEDED, RecordStatus.DUPLICATE, RecordStatus.FAILED

K = ("k1",)
A = ("k1", 1.0)
B = ("k1", 2.0)
CHECK_REFUSAL = Verdict(FAILED, "23514", "new row violates check constraint")

Key = tuple[Any, ...]
Row = tuple[tuple[Any, ...] | None, str | None]
"""A row as the model sees it: (values, tenant that wrote them)."""


def _outcomes(plan: WritePlan, steps: Sequence[Step]) -> list[tuple[RecordStatus, str | None]]:
    return [(plan.verdicts[s.ord].status, plan.verdicts[s.ord].code) for s in steps]


def _plan(
    steps: Sequence[Step],
    initial: Mapping[Key, Row] | None = None,
    refused: Mapping[int, Verdict] | None = None,
) -> WritePlan:
    """Plan ``steps`` against ``initial``, computing ``same`` as the sink's read does."""
    initial = initial or {}
    same = {s.ord for s in steps
            if s.operation is not DELETE and initial.get(s.key) == (s.values, s.tenant)}
    return plan_writes(steps, ExistingRows(present=set(initial), same=same), refused or {})


# --- The semantics table, one row each -------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "initial", "status", "code", "written", "deleted"),
    [
        pytest.param(INSERT, None, SUCCEEDED, None, True, False, id="insert-absent"),
        pytest.param(INSERT, A, DUPLICATE, None, False, False, id="insert-same"),
        pytest.param(INSERT, B, FAILED, UNIQUE_VIOLATION, False, False, id="insert-other"),
        pytest.param(UPSERT, None, SUCCEEDED, None, True, False, id="upsert-absent"),
        pytest.param(UPSERT, A, DUPLICATE, None, False, False, id="upsert-same"),
        pytest.param(UPSERT, B, SUCCEEDED, None, True, False, id="upsert-other"),
        pytest.param(DELETE, None, DUPLICATE, None, False, False, id="delete-absent"),
        pytest.param(DELETE, A, SUCCEEDED, None, False, True, id="delete-present-same"),
        pytest.param(DELETE, B, SUCCEEDED, None, False, True, id="delete-present-other"),
    ],
)
def test_semantics_table(
    operation: Operation,
    initial: tuple[Any, ...] | None,
    status: RecordStatus,
    code: str | None,
    written: bool,
    deleted: bool,
) -> None:
    """A record of values A against a key that is absent, holds A, or holds B."""
    values = K if operation is DELETE else A
    step = Step(0, operation, K, values, None)
    plan = _plan([step], {K: (initial, None)} if initial is not None else {})
    verdict = plan.verdicts[0]
    assert (verdict.status, verdict.code) == (status, code)
    assert plan.writes == ([0] if written else [])
    assert plan.deletes == ([0] if deleted else [])
    assert plan.key_of_action == ({0: K} if written or deleted else {})


def test_unique_violation_carries_a_message() -> None:
    plan = _plan([Step(0, INSERT, K, A, None)], {K: (B, None)})
    assert plan.verdicts[0].message


# --- Sequences within one key ------------------------------------------------------------


def test_upserts_a_b_a_on_a_row_holding_a_change_it_back_without_a_write() -> None:
    steps = [Step(0, UPSERT, K, A, None), Step(1, UPSERT, K, B, None), Step(2, UPSERT, K, A, None)]
    plan = _plan(steps, {K: (A, None)})
    assert _outcomes(plan, steps) == [(DUPLICATE, None), (SUCCEEDED, None), (SUCCEEDED, None)]
    assert (plan.writes, plan.deletes) == ([], [])


def test_upserts_a_b_a_on_an_absent_key_write_the_last() -> None:
    steps = [Step(0, UPSERT, K, A, None), Step(1, UPSERT, K, B, None), Step(2, UPSERT, K, A, None)]
    plan = _plan(steps)
    assert _outcomes(plan, steps) == [(SUCCEEDED, None)] * 3
    assert (plan.writes, plan.deletes) == ([2], [])
    assert plan.key_of_action == {2: K}


def test_insert_delete_insert_on_an_absent_key_writes_the_last() -> None:
    steps = [Step(0, INSERT, K, A, None), Step(1, DELETE, K, K, None), Step(2, INSERT, K, B, None)]
    plan = _plan(steps)
    assert _outcomes(plan, steps) == [(SUCCEEDED, None)] * 3
    assert (plan.writes, plan.deletes) == ([2], [])


def test_insert_then_delete_on_an_absent_key_leaves_it_untouched() -> None:
    steps = [Step(0, INSERT, K, A, None), Step(1, DELETE, K, K, None)]
    plan = _plan(steps)
    assert _outcomes(plan, steps) == [(SUCCEEDED, None)] * 2
    assert (plan.writes, plan.deletes) == ([], [])


def test_delete_then_insert_on_a_present_key_replaces_the_row() -> None:
    steps = [Step(0, DELETE, K, K, None), Step(1, INSERT, K, B, None)]
    plan = _plan(steps, {K: (A, None)})
    assert _outcomes(plan, steps) == [(SUCCEEDED, None)] * 2
    assert (plan.writes, plan.deletes) == ([1], [])


def test_delete_then_insert_of_the_same_row_is_no_action() -> None:
    steps = [Step(0, DELETE, K, K, None), Step(1, INSERT, K, A, None)]
    plan = _plan(steps, {K: (A, None)})
    assert _outcomes(plan, steps) == [(SUCCEEDED, None)] * 2
    assert (plan.writes, plan.deletes) == ([], [])


def test_upsert_then_deletes_on_a_present_key_delete_it_once() -> None:
    steps = [Step(0, UPSERT, K, B, None), Step(1, DELETE, K, K, None), Step(2, DELETE, K, K, None)]
    plan = _plan(steps, {K: (A, None)})
    assert _outcomes(plan, steps) == [(SUCCEEDED, None), (SUCCEEDED, None), (DUPLICATE, None)]
    assert plan.writes == []
    assert len(plan.deletes) == 1 and plan.deletes[0] in (1, 2)  # either delete names the key
    assert plan.key_of_action == {plan.deletes[0]: K}


def test_the_same_insert_twice_succeeds_then_is_a_duplicate() -> None:
    steps = [Step(0, INSERT, K, A, None), Step(1, INSERT, K, A, None)]
    plan = _plan(steps)
    assert _outcomes(plan, steps) == [(SUCCEEDED, None), (DUPLICATE, None)]
    assert (plan.writes, plan.deletes) == ([0], [])


def test_a_second_insert_with_other_values_fails_against_the_first() -> None:
    steps = [Step(0, INSERT, K, A, None), Step(1, INSERT, K, B, None)]
    plan = _plan(steps)
    assert _outcomes(plan, steps) == [(SUCCEEDED, None), (FAILED, UNIQUE_VIOLATION)]
    assert (plan.writes, plan.deletes) == ([0], [])


def test_a_refused_insert_leaves_its_key_absent_for_a_later_insert() -> None:
    steps = [Step(0, INSERT, K, A, None), Step(1, INSERT, K, B, None)]
    plan = _plan(steps, refused={0: CHECK_REFUSAL})
    assert plan.verdicts[0] == CHECK_REFUSAL
    assert plan.verdicts[1] == Verdict(SUCCEEDED)
    assert (plan.writes, plan.deletes) == ([1], [])


def test_a_refused_last_write_falls_back_to_the_row_before_it() -> None:
    steps = [Step(0, UPSERT, K, A, None), Step(1, UPSERT, K, B, None)]
    plan = _plan(steps, refused={1: CHECK_REFUSAL})
    assert _outcomes(plan, steps) == [(SUCCEEDED, None), (FAILED, "23514")]
    assert (plan.writes, plan.deletes) == ([0], [])


def test_a_refused_delete_leaves_the_row_in_place() -> None:
    steps = [Step(0, DELETE, K, K, None), Step(1, INSERT, K, B, None)]
    plan = _plan(steps, {K: (A, None)}, refused={0: CHECK_REFUSAL})
    assert plan.verdicts[0] == CHECK_REFUSAL
    assert (plan.verdicts[1].status, plan.verdicts[1].code) == (FAILED, UNIQUE_VIOLATION)
    assert (plan.writes, plan.deletes) == ([], [])


def test_a_refused_delete_after_a_delete_does_not_take_the_action() -> None:
    steps = [Step(0, DELETE, K, K, None), Step(1, DELETE, K, K, None)]
    plan = _plan(steps, {K: (A, None)}, refused={1: CHECK_REFUSAL})
    assert _outcomes(plan, steps) == [(SUCCEEDED, None), (FAILED, "23514")]
    assert (plan.writes, plan.deletes) == ([], [0])


def test_another_tenants_identical_row_is_replaced_by_upsert() -> None:
    steps = [Step(0, UPSERT, K, A, "b")]
    plan = _plan(steps, {K: (A, "a")})
    assert _outcomes(plan, steps) == [(SUCCEEDED, None)]
    assert (plan.writes, plan.deletes) == ([0], [])


def test_another_tenants_identical_row_fails_an_insert() -> None:
    steps = [Step(0, INSERT, K, A, "b")]
    plan = _plan(steps, {K: (A, "a")})
    assert _outcomes(plan, steps) == [(FAILED, UNIQUE_VIOLATION)]
    assert (plan.writes, plan.deletes) == ([], [])


def test_tenants_differ_within_one_write() -> None:
    steps = [Step(0, UPSERT, K, A, "a"), Step(1, UPSERT, K, A, "b"), Step(2, INSERT, K, A, "a")]
    plan = _plan(steps)
    assert _outcomes(plan, steps) == [(SUCCEEDED, None), (SUCCEEDED, None), (FAILED, UNIQUE_VIOLATION)]
    assert (plan.writes, plan.deletes) == ([1], [])


def test_keys_are_planned_independently() -> None:
    other = ("k2",)
    steps = [Step(0, INSERT, K, A, None), Step(1, DELETE, other, other, None),
             Step(2, INSERT, K, B, None)]
    plan = _plan(steps, {other: (("k2", 9.0), None)})
    assert _outcomes(plan, steps) == [(SUCCEEDED, None), (SUCCEEDED, None), (FAILED, UNIQUE_VIOLATION)]
    assert (plan.writes, plan.deletes) == ([0], [1])
    assert plan.key_of_action == {0: K, 1: other}


# --- Property: the plan agrees with applying the log one record at a time ---------------

KEYS = [("k1",), ("k2",), ("k3",)]
VALUES = [(1,), (2,), (3,)]
TENANTS = [None, "a", "b"]

_rows = st.tuples(st.sampled_from(VALUES), st.sampled_from(TENANTS))
_step_specs = st.lists(
    st.tuples(st.sampled_from(list(Operation)), st.sampled_from(KEYS), _rows), max_size=12)


def _model(
    steps: Sequence[Step], initial: Mapping[Key, Row], refused: Mapping[int, Verdict]
) -> tuple[dict[int, tuple[RecordStatus, str | None]], dict[Key, Row]]:
    """Apply each record in order to a dict, by the README's rules: (outcomes, final table)."""
    table = dict(initial)
    outcomes: dict[int, tuple[RecordStatus, str | None]] = {}
    for s in steps:
        if s.ord in refused:
            outcomes[s.ord] = (refused[s.ord].status, refused[s.ord].code)
            continue
        current = table.get(s.key)
        row = (s.values, s.tenant)
        if s.operation is DELETE:
            if current is None:
                outcomes[s.ord] = (DUPLICATE, None)
            else:
                del table[s.key]
                outcomes[s.ord] = (SUCCEEDED, None)
        elif current == row:
            outcomes[s.ord] = (DUPLICATE, None)
        elif current is not None and s.operation is INSERT:
            outcomes[s.ord] = (FAILED, UNIQUE_VIOLATION)
        else:
            table[s.key] = row
            outcomes[s.ord] = (SUCCEEDED, None)
    return outcomes, table


@settings(max_examples=400, deadline=None, database=None)
@given(
    specs=_step_specs,
    initial=st.dictionaries(st.sampled_from(KEYS), _rows),
    data=st.data(),
)
def test_plan_matches_applying_records_one_by_one(
    specs: list[tuple[Operation, Key, Row]], initial: dict[Key, Row], data: st.DataObject
) -> None:
    steps = [Step(n, op, key, None if op is DELETE else row[0], row[1])
             for n, (op, key, row) in enumerate(specs)]
    refused_ords = data.draw(st.sets(st.sampled_from(range(len(steps)))) if steps else st.just(set[int]()))
    refused = {o: CHECK_REFUSAL for o in refused_ords}

    plan = _plan(steps, initial, refused)
    outcomes, final = _model(steps, initial, refused)

    # (a) every record's outcome is the model's
    assert set(plan.verdicts) == {s.ord for s in steps}
    assert {o: (v.status, v.code) for o, v in plan.verdicts.items()} == outcomes

    # (b) the net actions bring the initial table to the model's final table
    table = dict(initial)
    for o in plan.writes:
        table[steps[o].key] = (steps[o].values, steps[o].tenant)
    for o in plan.deletes:
        del table[steps[o].key]
    assert table == final

    # (c) at most one action per key, each naming its key; no refused record acts
    acted = [steps[o].key for o in plan.writes + plan.deletes]
    assert len(acted) == len(set(acted))
    assert plan.key_of_action == {o: steps[o].key for o in plan.writes + plan.deletes}
    assert not set(plan.key_of_action) & refused_ords
    assert all(steps[o].operation is not DELETE for o in plan.writes)
    assert all(steps[o].operation is DELETE for o in plan.deletes)

    # (d) no action for a key left as it was
    assert all(initial.get(key) != final.get(key) for key in acted)
