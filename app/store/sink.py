"""The one PostgreSQL write boundary: a chunk of envelopes in, one transaction, outcomes out.

Plan in, SQL out. Per target, inserts of distinct keys (the common case) are first
copied straight into the table under a savepoint: if the table takes them all, every
one succeeded and that was the whole write. Otherwise (a key already there, a row the
table refuses, an upsert or delete) the chunk's records are staged by binary COPY; one
query evaluates the table's own row rules on them, one reads which keys have a row and
whether each record equals it; ``schemas.write_plan`` then decides every outcome and at
most one action per key, and two set-based statements apply those actions. Records of
one key are thereby applied in log order, across operations and jobs.

Exactly-once effects from at-least-once delivery: every outcome goes to the ledger (a
block per envelope) in the same transaction as the rows, so an envelope delivered again
finds its records there and is re-published, never re-applied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, NamedTuple

import asyncpg

from app.errors import SluiceError
from app.store import jobs as job_store
from app.store import ledger, reports
from app.store.errors import ErrorKind, classify, row_error_message, sqlstate_of
from app.store.positions import Claim, Fence, PartitionPositions
from app.store.row_checks import CHECK_VIOLATION, NOT_NULL_VIOLATION, RowChecks
from schemas.envelope import UNKNOWN_TARGET, Envelope
from schemas.identity import key_json_encoder
from schemas.outcomes import BlockBuilder, Outcome, OutcomeBlock, blocks_of, count_statuses
from schemas.sql import TENANT, TargetStatements, statements_for
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

    blocks: list[OutcomeBlock] = field(default_factory=list)
    """The outcomes written by this chunk, a block per envelope."""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Job snapshots after this chunk's counts were added."""
    replayed: list[OutcomeBlock] = field(default_factory=list)
    """Outcomes found already written: a redelivered envelope; published again."""

    @classmethod
    def of(cls, outcomes: Iterable[Outcome] = (), replayed: Iterable[Outcome] = (),
           jobs: dict[str, dict[str, Any]] | None = None) -> BatchResult:
        """A result from per-record outcomes."""
        return cls(blocks_of(outcomes), dict(jobs or {}), blocks_of(replayed))

    @property
    def records(self) -> int:
        """Outcomes written by this chunk."""
        return sum(len(b) for b in self.blocks)

    def outcomes(self) -> Iterator[Outcome]:
        """The outcomes written by this chunk, record by record."""
        for block in self.blocks:
            yield from block.outcomes()


@dataclass(slots=True)
class _TargetRecords:
    """One target's valid records of a chunk, in log order, waiting for their write; each
    knows the block (and position in it) its outcome goes to."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    tenants: list[str | None] = field(default_factory=list)
    builders: list[BlockBuilder] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    inserts_only: bool = True


class _DirectCopy:
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
        self._direct = _DirectCopy()
        self.add_targets(targets)

    def add_targets(self, targets: Mapping[str, Target]) -> None:
        """Learn targets (a rolling deploy may add one while this worker runs)."""
        for name, target in targets.items():
            if name not in self._targets:
                self._targets[name] = target
                self._statements[name] = statements_for(target)
                statements = self._statements[name]
                self._checks[name] = RowChecks(target, statements.stage, statements.rows_source)

    async def claim(self, partitions: Iterable[int]) -> dict[int, Claim]:
        """Take records partitions over (fencing their previous owner); where each continues."""
        return await self._positions.claim(self._pool, partitions)

    async def still_receiving(self, job_ids: Iterable[str]) -> set[str]:
        """Which of the jobs are still being received; any past its deadline is failed first."""
        return await job_store.still_receiving(self._pool, sorted(set(job_ids)))

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
            pending: dict[str, _TargetRecords] = {}
            builders = [self._sort_items(envelope, jobs[envelope.job_id], done, pending, give_up)
                        for envelope in live]
            for target_name in sorted(pending):
                if pending[target_name].rows:  # not when every record of it failed validation
                    await self._apply(conn, self._targets[target_name], pending[target_name])
            result = BatchResult([block for builder in builders for block in builder.blocks()],
                                 replayed=blocks_of(done.values()))
            await ledger.record(conn, result.blocks)
            result.jobs = await _update_jobs(conn, live, result.blocks, undeliverable, jobs)
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
        pending: dict[str, _TargetRecords],
        give_up: Verdict | None,
    ) -> BlockBuilder:
        """The envelope's block: outcomes settled for what needs no write (replayed, halted,
        invalid, unknown target); the rest queued for their target's write, as succeeded
        until the write says otherwise."""
        target = self._targets.get(envelope.target)
        key_json = key_json_encoder(target) if target is not None else None
        halted = job.state in HALTED_STATES
        job_id, operation = envelope.job_id, Operation(envelope.operation)
        builder = BlockBuilder(job_id)
        add = builder.add
        queue = pending.get(envelope.target) or pending.setdefault(envelope.target, _TargetRecords()) \
            if target is not None and not halted and give_up is None else None
        if queue is not None:
            rows, operations, tenants = queue.rows, queue.operations, queue.tenants
            builders, positions = queue.builders, queue.positions
            queue.inserts_only = queue.inserts_only and operation is Operation.INSERT
        tenant = job.tenant
        succeeded = RecordStatus.SUCCEEDED
        for item in envelope.items:
            if done and (job_id, item.index) in done:
                continue
            row = item.row
            if row is None:
                add(item.index, RecordStatus.ABORTED if halted else RecordStatus.FAILED, None,
                    None if halted else item.error_code, None if halted else item.error_message)
            elif queue is not None:
                assert key_json is not None
                positions.append(add(item.index, succeeded, key_json(row)))
                rows.append(row)
                operations.append(operation)
                tenants.append(tenant)
                builders.append(builder)
            elif halted:
                add(item.index, RecordStatus.ABORTED, key_json(row) if key_json else None)
            elif give_up is not None:
                add(item.index, give_up.status, key_json(row) if key_json else None,
                    give_up.code, give_up.message)
            else:
                add(item.index, RecordStatus.FAILED, None, UNKNOWN_TARGET,
                    f"this worker knows no target named {envelope.target!r}")
        return builder

    async def _apply(self, conn: asyncpg.Connection, target: Target, records: _TargetRecords) -> None:
        """Write one target's records; settle the outcome of each that did not succeed.

        Inserts of distinct keys are first copied straight into the table (under a
        savepoint): the common case then costs one COPY. If the table refuses any of
        them (a key already there, a rule), nothing of that COPY stays, and the records
        take the general path: stage, check, read, plan, write.
        """
        sql = self._statements[target.name]
        checks = self._checks[target.name]
        if records.inserts_only and len(set(map(target.key_of, records.rows))) == len(records.rows):
            if self._direct.worth_trying(target.name):
                if await _copy_direct(conn, target, records):
                    self._direct.hit(target.name)
                    return
                self._direct.miss(target.name)
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
        builders, positions = records.builders, records.positions
        for n, v in verdicts.items():
            if v is not SUCCEEDED:
                builders[n].settle(positions[n], v.status, v.code, v.message)

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
        found = await ledger.written_firsts(
            conn, [e.job_id for e in whole], [e.items[0].index for e in whole], since)
        by_record = [e for e in envelopes if e.items and (
            e.source_topic is not None or (e.job_id, e.items[0].index) in found)]
        if not by_record:
            return {}
        written = await ledger.outcomes_in(
            conn, [e.job_id for e in by_record], [min(i.index for i in e.items) for e in by_record],
            [max(i.index for i in e.items) for e in by_record], since)
        # Only the envelopes' own records: a block read may hold others near them.
        return {(e.job_id, i.index): o for e in by_record for i in e.items
                if (o := written.get((e.job_id, i.index))) is not None}


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
    records: _TargetRecords,
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
    builders, positions = records.builders, records.positions
    for n, v in verdicts.items():
        builders[n].settle(positions[n], v.status, v.code, v.message)
    return True


async def _copy_direct(conn: asyncpg.Connection, target: Target, records: _TargetRecords,
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


async def _update_jobs(
    conn: asyncpg.Connection, envelopes: Sequence[Envelope], blocks: Sequence[OutcomeBlock],
    undeliverable: Sequence[Undeliverable], jobs: Mapping[str, _Job],
) -> dict[str, dict[str, Any]]:
    counts = count_statuses(blocks)
    for u in undeliverable:
        if u.job_id is not None and u.job_id in jobs:
            job = counts.setdefault(u.job_id, dict.fromkeys(RecordStatus, 0))
            job[RecordStatus.FAILED] += u.records
    stream = {e.job_id for e in envelopes if e.source_topic is not None}
    return await job_store.record_progress(conn, {
        job_id: job_store.Progress(c[RecordStatus.SUCCEEDED], c[RecordStatus.FAILED],
                                   c[RecordStatus.DUPLICATE], c[RecordStatus.ABORTED],
                                   job_id in stream)
        for job_id, c in counts.items() if any(c.values())})


async def _record_undeliverable(
    conn: asyncpg.Connection, topic: str, undeliverable: Sequence[Undeliverable]
) -> None:
    for u in undeliverable:
        await conn.execute(
            "INSERT INTO sluice_undeliverable (topic, partition, \"offset\", job_id, records, reason)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            topic, u.partition, u.offset, u.job_id, u.records, u.reason,
        )

