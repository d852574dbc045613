"""Planning a write: records of one target in log order, the rows they meet, outcomes and net effects.

Pure: no I/O. The sink stages the records, reads which keys exist (and whether each
record equals the existing row), and asks ``plan_writes`` what every record's outcome
is and which single action per key brings the table to the state the log implies. The
rules are the README's semantics table, one branch each in ``_apply``:

=========  ===============  =========================  ===================
operation  row of the key   outcome                    effect
=========  ===============  =========================  ===================
insert     absent           succeeded                  row written
insert     same values      duplicate                  none
insert     other values     failed 23505               none
upsert     absent           succeeded                  row written
upsert     same values      duplicate                  none
upsert     other values     succeeded                  row replaced
delete     absent           duplicate                  none
delete     present          succeeded                  row deleted
=========  ===============  =========================  ===================

"Same values" includes the tenant that last wrote the row, so that one tenant's outcome
never says that another tenant's row holds exactly these values.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from schemas.vocabulary import Operation, RecordStatus

UNIQUE_VIOLATION = "23505"
UNIQUE_VIOLATION_MESSAGE = "a row with this key already exists"


class Step(NamedTuple):
    """One record of a write, in log order (a named tuple: one is made per record)."""

    ord: int
    """Its position in the staging table: how actions name the row to write or delete."""
    operation: Operation
    key: tuple[Any, ...]
    values: tuple[Any, ...] | None
    """The whole converted row, compared with a row an earlier record of this write left."""
    tenant: str | None


class Verdict(NamedTuple):
    """A record's outcome."""

    status: RecordStatus
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ExistingRows:
    """What the table held for the staged keys before this write, as the sink read it."""

    present: Collection[tuple[Any, ...]]
    """Keys that have a row."""
    same: Collection[int]
    """Ords of records whose values and tenant equal their key's existing row."""


@dataclass(slots=True)
class WritePlan:
    """Every record's outcome, and at most one action per key."""

    verdicts: dict[int, Verdict] = field(default_factory=dict)
    writes: list[int] = field(default_factory=list)
    """Ords whose staged row becomes their key's row (insert, or replace by key)."""
    deletes: list[int] = field(default_factory=list)
    """Ords whose key's row is deleted."""
    key_of_action: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    """The key each action's ord stands for."""


_ABSENT = 0
_INITIAL = 1
_WRITTEN = 2
# Verdicts are immutable: one of each, shared by every record that gets it (the sink too).
SUCCEEDED = Verdict(RecordStatus.SUCCEEDED)
DUPLICATE = Verdict(RecordStatus.DUPLICATE)
KEY_EXISTS = Verdict(RecordStatus.FAILED, UNIQUE_VIOLATION, UNIQUE_VIOLATION_MESSAGE)


def plan_writes(
    steps: Sequence[Step],
    existing: ExistingRows,
    refused: Mapping[int, Verdict],
) -> WritePlan:
    """Outcomes of ``steps`` applied in order to ``existing``, and the net action per key.

    ``refused`` holds records the database will not take (a check constraint, a key too
    large to index): they fail and leave their key as it was, so later records of the
    same key are judged against the state before them. Within one write only a key's
    last state is written: a key changed and changed back is left untouched.
    """
    plan = WritePlan()
    groups: Iterable[tuple[tuple[Any, ...], Sequence[Step]]]
    if len({step.key for step in steps}) == len(steps):  # the common case: no key repeats
        groups = ((step.key, (step,)) for step in steps)
    else:
        by_key: dict[tuple[Any, ...], list[Step]] = {}
        for step in steps:
            by_key.setdefault(step.key, []).append(step)
        groups = by_key.items()
    present, same = existing.present, existing.same
    for key, key_steps in groups:
        initially_present = key in present
        state = _INITIAL if initially_present else _ABSENT
        last: Step | None = None  # the record whose values the row holds, when _WRITTEN
        deleting: Step | None = None  # the delete that last removed the row
        for step in key_steps:
            verdict = refused.get(step.ord)
            if verdict is None:
                state, last, verdict = _apply(state, last, step, same)
                if step.operation is Operation.DELETE and verdict is SUCCEEDED:
                    deleting = step
            plan.verdicts[step.ord] = verdict
        if state == _WRITTEN:
            assert last is not None
            if not (initially_present and last.ord in same):
                plan.writes.append(last.ord)
                plan.key_of_action[last.ord] = key
        elif state == _ABSENT and initially_present:
            assert deleting is not None
            plan.deletes.append(deleting.ord)
            plan.key_of_action[deleting.ord] = key
    return plan


def _apply(
    state: int, last: Step | None, step: Step, same: Collection[int]
) -> tuple[int, Step | None, Verdict]:
    """One record against its key's current state: (next state, row holder, outcome)."""
    if step.operation is Operation.DELETE:
        if state == _ABSENT:
            return state, last, DUPLICATE
        return _ABSENT, None, SUCCEEDED
    if state == _ABSENT:
        return _WRITTEN, step, SUCCEEDED
    if state == _INITIAL:
        unchanged = step.ord in same
    else:
        assert last is not None
        unchanged = last.values == step.values and last.tenant == step.tenant
    if unchanged:
        return state, last, DUPLICATE
    if step.operation is Operation.INSERT:
        return state, last, KEY_EXISTS
    return _WRITTEN, step, SUCCEEDED
