"""The one PostgreSQL write boundary: a chunk of envelopes in, one transaction, outcomes out.

Plan in, SQL out. Per target, the chunk's records are staged by binary COPY; one query
evaluates the table's own row rules on them, one reads which keys have a row and
whether each record equals it; ``schemas.write_plan`` then decides every outcome and at
most one action per key, and two set-based statements apply those actions. Records of
one key are thereby applied in log order, across operations and jobs.

Exactly-once effects from at-least-once delivery: every outcome goes to the ledger in
the same transaction as the rows, so an envelope delivered again finds its records
there and is re-published, never re-applied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, NamedTuple

import asyncpg

from app.errors import SluiceError
from app.store import jobs as job_store
from app.store import ledger, reports
from app.store.errors import ErrorKind, classify, row_error_message, sqlstate_of
from app.store.ledger import Outcome
from app.store.positions import Claim, Fence, PartitionPositions
from app.store.row_checks import CHECK_VIOLATION, NOT_NULL_VIOLATION, RowChecks
from schemas.envelope import UNKNOWN_TARGET, Envelope
from schemas.identity import key_json_encoder
from schemas.sql import TargetStatements, statements_for
from schemas.targets import Target
from schemas.vocabulary import HALTED_STATES, TERMINAL_STATES, JobState, Operation, RecordStatus
from schemas.write_plan import (
    DUPLICATE,
    KEY_EXISTS,
    SUCCEEDED,
    ExistingRows,
    Step,
    Verdict,
    plan_writes,
)

log = logging.getLogger(__name__)

ISOLATION_FANOUT = 8
"""A set the database refuses is split this many ways, each part under a savepoint, until
the refused rows stand alone: about log8(n) statements per bad row, no TRUNCATE inside."""


class JobNotSealed(SluiceError):
    """A job's records are still being produced; its envelopes must wait."""


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A records-topic message that could not be read as an envelope."""

    partition: int
    offset: int
    job_id: str | None
    """From the message's headers, when they name it."""
    records: int
    reason: str


class _Job(NamedTuple):
    state: str
    tenant: str | None
    created_on: date


@dataclass(slots=True)
class BatchResult:
    """What one committed chunk produced, for the agent to publish after the commit."""

    outcomes: list[Outcome] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Job snapshots after this chunk's counts were added."""
    replayed: list[Outcome] = field(default_factory=list)
    """Outcomes found already written: a redelivered envelope; published again."""


class _Pending(NamedTuple):
    """A valid record waiting for its write."""

    job_id: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing here uses
    operation: Operation
    row: tuple[Any, ...]
    tenant: str | None


class PostgresSink:
    """Writes chunks of envelopes into their target tables."""

    def __init__(
        self, pool: asyncpg.Pool, targets: Mapping[str, Target], *,
        positions: PartitionPositions, topic: str,
    ) -> None:
        self._pool = pool
        self._positions = positions
        self._topic = topic
        self._targets: dict[str, Target] = {}
        self._statements: dict[str, TargetStatements] = {}
        self._checks: dict[str, RowChecks] = {}
        self.add_targets(targets)

    def add_targets(self, targets: Mapping[str, Target]) -> None:
        """Learn targets (a rolling deploy may add one while this worker runs)."""
        for name, target in targets.items():
            if name not in self._targets:
                self._targets[name] = target
                self._statements[name] = statements_for(target)
                self._checks[name] = RowChecks(target, self._statements[name].stage)

    async def claim(self, partitions: Iterable[int]) -> dict[int, Claim]:
        """Take records partitions over (fencing their previous owner); where each continues."""
        return await self._positions.claim(self._pool, partitions)

    async def still_receiving(self, job_ids: Iterable[str]) -> set[str]:
        """Which of the jobs are still being received; any past its deadline is failed first."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await job_store.still_receiving(conn, sorted(set(job_ids)))

    async def advance(self, fence: Fence) -> None:
        """Move a partition's position once the outcomes below it are published."""
        await self._positions.advance(self._pool, fence)

    async def write(
        self,
        envelopes: Sequence[Envelope],
        owner: Claim,
        undeliverable: Sequence[Undeliverable] = (),
        *,
        give_up: Verdict | None = None,
    ) -> BatchResult:
        """Apply every record of the envelopes in one transaction.

        Raises Fenced (before anything is written) unless ``owner`` still owns the partition,
        JobNotSealed if a job is still being received. With ``give_up``, nothing is written
        to the targets: every record not yet in the ledger gets that verdict (a batch that
        kept failing past its retry bound).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await self._positions.hold(conn, owner.partition, owner.epoch)
            jobs = await self._jobs(conn, envelopes, undeliverable)
            live = [e for e in envelopes if e.job_id in jobs]
            done = await self._already_written(conn, live, jobs)
            result = BatchResult(replayed=list(done.values()))
            pending: dict[str, list[_Pending]] = {}
            for envelope in live:
                self._sort_items(envelope, jobs[envelope.job_id], done, result, pending, give_up)
            for target_name in sorted(pending):
                await self._apply(conn, self._targets[target_name], pending[target_name], result)
            await ledger.record(conn, result.outcomes)
            result.jobs = await _update_jobs(conn, live, result.outcomes, undeliverable, jobs)
            await reports.enqueue_terminal(conn, [
                job_id for job_id, job in jobs.items()
                if job.state in TERMINAL_STATES
                or result.jobs.get(job_id, {}).get("state") in TERMINAL_STATES])
            await _record_undeliverable(conn, self._topic, undeliverable)
            return result

    def _sort_items(
        self,
        envelope: Envelope,
        job: _Job,
        done: Mapping[tuple[str, int], Outcome],
        result: BatchResult,
        pending: dict[str, list[_Pending]],
        give_up: Verdict | None,
    ) -> None:
        """Settle what needs no write (replayed, halted, invalid, unknown target); queue the rest."""
        target = self._targets.get(envelope.target)
        key_json = key_json_encoder(target) if target is not None else None
        halted = job.state in HALTED_STATES
        job_id, operation = envelope.job_id, Operation(envelope.operation)
        queue = pending.setdefault(envelope.target, []) if target is not None else None
        outcomes = result.outcomes
        for item in envelope.items:
            if done and (job_id, item.index) in done:
                continue
            row = item.row
            if queue is not None and row is not None and not halted and give_up is None:
                queue.append(_Pending(job_id, item.index, operation, row, job.tenant))
                continue
            key = key_json(row) if key_json is not None and row is not None else None
            if halted:
                outcomes.append(Outcome(job_id, item.index, RecordStatus.ABORTED, key))
            elif row is None:
                outcomes.append(Outcome(job_id, item.index, RecordStatus.FAILED, None,
                                        item.error_code, item.error_message))
            elif give_up is not None:
                outcomes.append(Outcome(job_id, item.index, give_up.status, key,
                                        give_up.code, give_up.message))
            else:
                outcomes.append(Outcome(job_id, item.index, RecordStatus.FAILED, None, UNKNOWN_TARGET,
                                        f"this worker knows no target named {envelope.target!r}"))

    async def _apply(
        self, conn: asyncpg.Connection, target: Target, records: list[_Pending], result: BatchResult
    ) -> None:
        """Stage, check, read, plan and write one target's records; add their outcomes."""
        sql = self._statements[target.name]
        checks = self._checks[target.name]
        key_of = target.key_of
        await conn.execute(sql.prepare_stage)
        await conn.copy_records_to_table(
            sql.stage, columns=list(sql.stage_columns),
            records=[(n, *r.row, r.tenant) for n, r in enumerate(records)],
        )
        steps = [Step(n, r.operation, key_of(r.row), r.row, r.tenant) for n, r in enumerate(records)]
        checked = [s.ord for s in steps if s.operation is not Operation.DELETE]
        verdicts = await _insert_all_new(conn, sql, checks, steps, checked)
        if verdicts is None:
            verdicts = await self._plan_and_write(conn, sql, checks, steps, checked)
        key_json = key_json_encoder(target)
        append = result.outcomes.append
        for n, record in enumerate(records):
            v = verdicts[n]
            append(Outcome(record.job_id, record.index, v.status, key_json(record.row), v.code, v.message))

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

    async def _jobs(
        self, conn: asyncpg.Connection, envelopes: Sequence[Envelope],
        undeliverable: Sequence[Undeliverable],
    ) -> dict[str, _Job]:
        """The jobs of these envelopes that exist (an absent job's submission was refused
        before it was recorded: its records are ignored)."""
        stream_jobs = {e.job_id: e for e in envelopes if e.source_topic is not None}
        for job_id, e in sorted(stream_jobs.items()):
            await job_store.open_stream(conn, job_id, e.target, e.operation)
        wanted = {e.job_id for e in envelopes} | {u.job_id for u in undeliverable if u.job_id}
        rows = await job_store.states_of(conn, list(wanted))
        # The apply loop held these jobs' envelopes back until sealed (and failed the
        # expired ones); a job receiving here would be a bug, so it waits rather than applies.
        if waiting := sorted(r["job_id"] for r in rows if r["state"] == JobState.RECEIVING):
            raise JobNotSealed(", ".join(waiting))
        return {row["job_id"]: _Job(row["state"], row["tenant"], row["created_at"].date())
                for row in rows}

    @staticmethod
    async def _already_written(
        conn: asyncpg.Connection, envelopes: Sequence[Envelope], jobs: Mapping[str, _Job]
    ) -> dict[tuple[str, int], Outcome]:
        """Outcomes already in the ledger for the envelopes' records.

        Every envelope is looked up, not only those below the committed position: the same
        records can come back at a new offset (a producer retry, the forwarder re-forwarding
        after a crash). An envelope from the web is always written whole (chunks never split
        an envelope), so its first record answers for all of it: one probe per envelope,
        and the full lookup only for one found written. The forwarder can regroup records
        differently after a crash, so its envelopes are looked up record by record.
        """
        if not envelopes:
            return {}
        # Outcomes are written on or after the day their job was created (a day of slack
        # for clocks): older day partitions need not be searched.
        since = min(jobs[e.job_id].created_on for e in envelopes) - timedelta(days=1)
        whole = [e for e in envelopes if e.source_topic is None and e.items]
        found = await ledger.already_written(
            conn, [e.job_id for e in whole], [e.items[0].index for e in whole], since)
        by_record = [e for e in envelopes if e.source_topic is not None
                     or (e.items and (e.job_id, e.items[0].index) in found)]
        job_ids: list[str] = []
        indexes: list[int] = []
        for e in by_record:
            job_ids.extend([e.job_id] * len(e.items))
            indexes.extend(item.index for item in e.items)
        return {**found, **await ledger.already_written(conn, job_ids, indexes, since)}


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


async def _update_jobs(
    conn: asyncpg.Connection, envelopes: Sequence[Envelope], outcomes: Sequence[Outcome],
    undeliverable: Sequence[Undeliverable], jobs: Mapping[str, _Job],
) -> dict[str, dict[str, Any]]:
    counts: dict[str, list[int]] = {e.job_id: [0, 0, 0, 0] for e in envelopes}
    slot = {RecordStatus.SUCCEEDED: 0, RecordStatus.FAILED: 1, RecordStatus.DUPLICATE: 2,
            RecordStatus.ABORTED: 3}
    for o in outcomes:
        counts[o.job_id][slot[RecordStatus(o.status)]] += 1
    for u in undeliverable:
        if u.job_id is not None and u.job_id in jobs:
            counts.setdefault(u.job_id, [0, 0, 0, 0])[1] += u.records
    stream = {e.job_id for e in envelopes if e.source_topic is not None}
    snapshots: dict[str, dict[str, Any]] = {}
    # Sorted: two transactions updating the same jobs lock them in the same order.
    for job_id, (ok, bad, dup, aborted) in sorted(counts.items()):
        if ok + bad + dup + aborted == 0:
            continue
        snapshot = await job_store.record_progress(
            conn, job_id, succeeded=ok, failed=bad, duplicates=dup, aborted=aborted,
            stream=job_id in stream)
        if snapshot is not None:
            snapshots[job_id] = snapshot
    return snapshots


async def _record_undeliverable(
    conn: asyncpg.Connection, topic: str, undeliverable: Sequence[Undeliverable]
) -> None:
    for u in undeliverable:
        await conn.execute(
            "INSERT INTO sluice_undeliverable (topic, partition, \"offset\", job_id, records, reason)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            topic, u.partition, u.offset, u.job_id, u.records, u.reason,
        )

