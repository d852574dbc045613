"""How one target's records of a chunk are written, inside the sink's transaction.

Inserts of distinct keys (the common case) are first copied straight into the table
under a savepoint: if the table takes them all, every one succeeded and that was the
whole write. Otherwise (a key already there, a row the table refuses, an upsert or
delete) the records are staged by binary COPY; one query evaluates the table's own row
rules on them, one reads which keys have a row and whether each record equals it;
``schemas.write_plan`` then decides every outcome and at most one action per key, and two
set-based statements apply those actions. Records of one key are thereby applied in log
order, across operations and jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.errors import SluiceError
from app.store.errors import ErrorKind, classify, row_error_message, sqlstate_of
from app.store.row_checks import CHECK_VIOLATION, NOT_NULL_VIOLATION, RowChecks
from schemas.outcomes import BlockBuilder
from schemas.received import row_text
from schemas.sql import TENANT, TargetStatements, statements_for
from schemas.targets import Target
from schemas.vocabulary import Operation, RecordStatus
from schemas.write_plan import (
    DUPLICATE,
    KEY_EXISTS,
    SUCCEEDED,
    ExistingRows,
    Step,
    Verdict,
    plan_writes,
)

ISOLATION_FANOUT = 8
"""A set the database refuses is split this many ways, each part under a savepoint, until
the refused rows stand alone: about log8(n) statements per bad row, no TRUNCATE inside."""


@dataclass(slots=True)
class TargetRecords:
    """One target's valid records of a chunk, in log order, waiting for their write; each
    knows the block (and position in it) its outcome goes to."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    tenants: list[str | None] = field(default_factory=list)
    builders: list[BlockBuilder] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    inserts_only: bool = True


class DirectCopy:
    """When to try copying a chunk straight into its table: after a miss (a key already
    there, a row refused), not for the next few chunks of that target, twice as many
    after each further miss, so that dirty data costs one failed COPY now and then."""

    MAX_SKIP = 64

    def __init__(self) -> None:
        self._skip: dict[str, int] = {}
        self._backoff: dict[str, int] = {}

    def worth_trying(self, target: str) -> bool:
        left = self._skip.get(target, 0)
        if left:
            self._skip[target] = left - 1
            return False
        return True

    def hit(self, target: str) -> None:
        self._backoff.pop(target, None)

    def miss(self, target: str) -> None:
        backoff = min(self._backoff.get(target, 1) * 2, self.MAX_SKIP)
        self._backoff[target] = backoff
        self._skip[target] = backoff



class TargetWriter:
    """Writes targets' records; knows each target's statements, row rules and COPY luck."""

    def __init__(self) -> None:
        self._statements: dict[str, TargetStatements] = {}
        self._checks: dict[str, RowChecks] = {}
        self.direct = DirectCopy()

    def add_targets(self, targets: Mapping[str, Target]) -> None:
        """Learn targets (a rolling deploy may add one while this worker runs)."""
        for name, target in targets.items():
            if name not in self._statements:
                statements = statements_for(target)
                self._statements[name] = statements
                self._checks[name] = RowChecks(target, statements.stage, statements.rows_source)

    async def write(self, conn: asyncpg.Connection, target: Target, records: TargetRecords) -> None:
        """Write one target's records; settle the outcome of each that did not succeed.

        Inserts of distinct keys are first copied straight into the table (under a
        savepoint): the common case then costs one COPY. If the table refuses any of
        them (a key already there, a rule), nothing of that COPY stays, and the records
        take the general path: stage, check, read, plan, write.
        """
        sql = self._statements[target.name]
        checks = self._checks[target.name]
        if records.inserts_only and len(set(map(target.key_of, records.rows))) == len(records.rows):
            if self.direct.worth_trying(target.name):
                if await _copy_direct(conn, target, records):
                    self.direct.hit(target.name)
                    return
                self.direct.miss(target.name)
            if await _insert_checked(conn, target, sql, checks, records):
                return
        key_of = target.key_of
        rows, tenants = records.rows, records.tenants
        await conn.execute(sql.prepare_stage)
        await conn.copy_records_to_table(
            sql.stage, columns=list(sql.stage_columns),
            records=[(n, *row, tenants[n]) for n, row in enumerate(rows)],
        )
        steps = [Step(n, op, key_of(rows[n]), rows[n], tenants[n])
                 for n, op in enumerate(records.operations)]
        checked = [s.ord for s in steps if s.operation is not Operation.DELETE]
        verdicts = await _insert_all_new(conn, sql, checks, steps, checked)
        if verdicts is None:
            verdicts = await self._plan_and_write(conn, sql, checks, steps, checked)
        _settle(target, records, verdicts)

    @staticmethod
    async def _plan_and_write(
        conn: asyncpg.Connection, sql: TargetStatements, checks: RowChecks, steps: list[Step],
        checked: list[int],
    ) -> dict[int, Verdict]:
        """Read the keys' rows, plan every outcome in log order, write one action per key."""
        found = await conn.fetch(sql.existing)
        existing = ExistingRows(present={steps[r["ord"]].key for r in found},
                                same={r["ord"] for r in found if r["same"]})
        verdicts: dict[int, Verdict] = {}
        for last_try in (False, True):
            refused = await checks.refused(conn, checked)
            writes = conn.transaction()  # a savepoint: undone if the table's rules changed
            await writes.start()
            try:
                verdicts = await _write_planned(conn, sql, steps, existing, refused,
                                                rules_may_be_stale=not last_try)
            except _RulesChanged:
                await writes.rollback()
                checks.stale()
                continue
            await writes.commit()
            break
        return verdicts


async def _insert_all_new(
    conn: asyncpg.Connection, sql: TargetStatements, checks: RowChecks, steps: list[Step],
    checked: list[int],
) -> dict[int, Verdict] | None:
    """Inserts of distinct keys (the common case): one statement, no plan.

    ``ON CONFLICT DO NOTHING`` under a savepoint: the rows that went in succeeded; for the
    keys that were already there, one probe says whether each record equals its row (a
    duplicate) or not (23505). If the table refuses a row, nothing of it stays and None
    sends the records down the general path, which isolates the refused rows.
    """
    if (len(checked) != len(steps) or any(s.operation is not Operation.INSERT for s in steps)
            or len({s.key for s in steps}) != len(steps)):
        return None
    refused = await checks.refused(conn, checked)
    ords = [s.ord for s in steps if s.ord not in refused]
    attempt = conn.transaction()  # a savepoint
    await attempt.start()
    try:
        if len(ords) == len(steps):
            inserted = await conn.fetch(sql.insert_new_all)
        else:
            inserted = await conn.fetch(sql.insert_new, ords)
    except asyncpg.PostgresError as e:
        if classify(e) is not ErrorKind.ROW:
            raise
        await attempt.rollback()
        return None
    await attempt.commit()
    verdicts = dict.fromkeys((r["ord"] for r in inserted), SUCCEEDED)
    verdicts.update(refused)
    if len(verdicts) < len(steps):  # keys already there: same values, or another row
        conflicts = [s.ord for s in steps if s.ord not in verdicts]
        same = {r["ord"] for r in await conn.fetch(sql.existing_of, conflicts) if r["same"]}
        verdicts.update({o: DUPLICATE if o in same else KEY_EXISTS for o in conflicts})
    return verdicts


class _RulesChanged(SluiceError):
    """The table refused a row by a CHECK or NOT NULL rule the pre-check did not know."""


async def _write_planned(
    conn: asyncpg.Connection, sql: TargetStatements, steps: list[Step], existing: ExistingRows,
    refused: dict[int, Verdict], *, rules_may_be_stale: bool,
) -> dict[int, Verdict]:
    """Plan and write; rows the database refuses fail and their keys are judged again.

    Only a key's final state is written, so a record superseded within the write is judged
    by the pre-checked rules alone: if the table refuses a row by a rule the pre-check did
    not know, _RulesChanged makes the caller re-read the rules and start again.
    """
    plan = plan_writes(steps, existing, refused)
    verdicts = dict(plan.verdicts)
    writes, deletes = plan.writes, plan.deletes
    while writes or deletes:
        failures = await _write_isolating(conn, sql, writes, deletes, staged=len(steps))
        if not failures:
            break
        if rules_may_be_stale and any(
                v.code in (CHECK_VIOLATION, NOT_NULL_VIOLATION) for v in failures.values()):
            raise _RulesChanged()
        # The refused records leave their keys as they were: judge those keys again
        # without them; every other key's action is already applied.
        affected = {plan.key_of_action[o] for o in failures}
        refused = {**refused, **failures}
        plan = plan_writes([s for s in steps if s.key in affected], existing, refused)
        verdicts.update(plan.verdicts)
        writes, deletes = plan.writes, plan.deletes
    return verdicts


async def _write_isolating(
    conn: asyncpg.Connection, sql: TargetStatements, writes: list[int], deletes: list[int],
    *, staged: int,
) -> dict[int, Verdict]:
    """Apply the actions; any the database refuses are isolated and returned with their SQLSTATE.

    Every attempt runs under its own savepoint, so a refused part costs only itself.
    """
    failures: dict[int, Verdict] = {}

    async def attempt(ws: list[int], ds: list[int]) -> None:
        try:
            async with conn.transaction():  # a savepoint
                if ds:
                    await conn.execute(sql.delete, ds)
                if ws:
                    if len(ws) == staged:  # every staged row: no per-row filter
                        await conn.execute(sql.write_all)
                    else:
                        await conn.execute(sql.write, ws)
        except asyncpg.PostgresError as e:
            if classify(e) is not ErrorKind.ROW:
                raise
            if len(ws) + len(ds) == 1:
                failures[(ws or ds)[0]] = Verdict(
                    RecordStatus.FAILED, sqlstate_of(e), row_error_message(e))
                return
            actions = [(o, True) for o in ws] + [(o, False) for o in ds]
            size = -(-len(actions) // ISOLATION_FANOUT)
            for start in range(0, len(actions), size):
                part = actions[start:start + size]
                await attempt([o for o, w in part if w], [o for o, w in part if not w])

    await attempt(writes, deletes)
    return failures


async def _insert_checked(
    conn: asyncpg.Connection, target: Target, sql: TargetStatements, checks: RowChecks,
    records: TargetRecords,
) -> bool:
    """Inserts of distinct keys among which some fail (dirty data): judged without staging.

    Two queries over the records sent as arrays say which keys already have a row (and
    whether it holds these values: a duplicate, else 23505) and which records the table's
    rules refuse; the rest are copied straight in. False, with nothing written, if the
    table still refuses one of those (a rule not known yet): the general path then
    isolates it.
    """
    columns = list(zip(*records.rows, strict=True))
    found = await conn.fetch(sql.existing_in_arrays, *columns, records.tenants)
    verdicts: dict[int, Verdict] = {r["ord"]: DUPLICATE if r["same"] else KEY_EXISTS for r in found}
    verdicts.update(await checks.refused_in_arrays(conn, columns, records.tenants))
    rest = [n for n in range(len(records.rows)) if n not in verdicts]
    if rest and not await _copy_direct(conn, target, records, rest):
        return False
    _settle(target, records, verdicts)
    return True


def _settle(target: Target, records: TargetRecords, verdicts: Mapping[int, Verdict]) -> None:
    """Give the records that did not succeed their verdict, and a failed one its record: the
    row re-serialised (schemas.received), since the worker never had its text."""
    builders, positions, rows, operations = (
        records.builders, records.positions, records.rows, records.operations)
    for n, v in verdicts.items():
        if v is not SUCCEEDED:
            builders[n].settle(positions[n], v.status, v.code, v.message,
                               row_text(target, rows[n], operations[n])
                               if v.status is RecordStatus.FAILED else None)


async def _copy_direct(conn: asyncpg.Connection, target: Target, records: TargetRecords,
                       only: Sequence[int] | None = None) -> bool:
    """COPY the rows (``only`` those positions) into the table under a savepoint; False (and
    nothing written) if the table refused any row for a reason of the row's own."""
    rows, tenants = records.rows, records.tenants
    attempt = conn.transaction()  # a savepoint
    await attempt.start()
    try:
        await conn.copy_records_to_table(
            target.name, columns=[*target.column_names, TENANT],
            records=[(*row, tenants[n]) for n, row in enumerate(rows)] if only is None
            else [(*rows[n], tenants[n]) for n in only])
    except asyncpg.PostgresError as e:
        await attempt.rollback()
        if classify(e) is not ErrorKind.ROW:
            raise
        return False
    await attempt.commit()
    return True


