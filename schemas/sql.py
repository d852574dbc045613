"""SQL text for a target: its table, its staging table and the set-based write statements.

Pure string building, kept apart from I/O so each statement can be read and tested
alone. Identifiers come from validated schema names and are quoted all the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from schemas.targets import Target

ORD = "_sluice_ord"
"""Staging-only column: the position of a row in the batch, to map results back."""


def storable(text: str) -> bool:
    """Whether PostgreSQL text can hold ``text`` (it cannot hold NUL): a client's id or
    filter that it cannot hold names nothing stored, and is never sent to it."""
    return "\x00" not in text


def quote(identifier: str) -> str:
    """Quote an SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def _scratch_name(prefix: str, target_name: str) -> str:
    """A staging table name unique per target within PostgreSQL's 63-byte identifiers."""
    digest = hashlib.blake2b(target_name.encode(), digest_size=4).hexdigest()
    return f"{prefix}{target_name[:32]}_{digest}"


TENANT = "_sluice_tenant"
"""Column Sluice adds to every target table: the tenant that last wrote the row (NULL for
Kafka producers and rows written by others). A record equal to a row written by another
tenant is not reported as a duplicate, so outcomes tell a tenant no more about other
tenants' rows than the key does."""


@dataclass(frozen=True, slots=True)
class TargetStatements:
    """Every statement the sink needs for one target."""

    create_table: str
    add_tenant_column: str
    """Gives a table created before the tenant column existed that column (instant: no rewrite)."""
    prepare_stage: str
    """Create the session's staging table if missing and empty it, in one round trip."""
    stage: str
    stage_columns: tuple[str, ...]
    existing: str
    """For staged rows whose key has a row: (ord, whether values and tenant are the same)."""
    write: str
    """Make the staged rows of the given ords their keys' rows: insert, or replace by key."""
    write_all: str
    """``write`` for every staged row (the common case: no filter to evaluate per row)."""
    delete: str
    """Delete the rows of the keys staged under the given ords."""
    existing_of: str
    """``existing`` for the staged rows of the given ords only."""
    insert_new: str
    """Insert the staged rows of the given ords whose keys have no row; returns their ords."""
    insert_new_all: str
    """``insert_new`` for every staged row."""
    rows_source: str
    """The records as a relation without staging: one array parameter per column, then the
    tenants ($1...), numbered by ``ORD`` from 1 (``unnest ... WITH ORDINALITY``)."""
    existing_in_arrays: str
    """``existing`` for the records given as arrays (``rows_source``)."""


def statements_for(target: Target) -> TargetStatements:
    """Build the SQL for one target."""
    table = quote(target.name)
    stage = quote(_scratch_name("_sluice_stage_", target.name))
    tenant = quote(TENANT)
    ord_ = quote(ORD)
    cols = [quote(c.name) for c in target.columns]
    keys = [quote(k) for k in target.key]
    non_keys = [quote(c.name) for c in target.columns if c.name not in target.key]
    col_list = ", ".join([*cols, tenant])
    key_list = ", ".join(keys)
    definitions = ", ".join(
        f"{quote(c.name)} {c.pg_type}{'' if c.nullable else ' NOT NULL'}" for c in target.columns
    )
    stage_definitions = ", ".join(f"{quote(c.name)} {c.pg_type}" for c in target.columns)
    key_join = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    # One index probe per staged row, whatever the planner thinks of an unanalysed temp
    # table: a plain join was planned as a hash join over the whole target table.
    probe = f"CROSS JOIN LATERAL (SELECT * FROM {table} t WHERE {key_join} LIMIT 1) t"
    inserted_join = " AND ".join(f"i.{k} = s.{k}" for k in keys)
    compared = [*non_keys, tenant]
    same = (f"({', '.join(f't.{c}' for c in compared)}) IS NOT DISTINCT FROM "
            f"({', '.join(f's.{c}' for c in compared)})")
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in compared)
    arrays = ", ".join(f"${n}::{c.pg_type}[]" for n, c in enumerate(target.columns, 1))
    rows_source = (f"unnest({arrays}, ${len(target.columns) + 1}::text[]) WITH ORDINALITY "
                   f"AS s({col_list}, {ord_})")
    return TargetStatements(
        create_table=(
            f"CREATE TABLE IF NOT EXISTS {table} ({definitions}, {tenant} text, "
            f"PRIMARY KEY ({key_list}))"
        ),
        add_tenant_column=f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {tenant} text",
        prepare_stage=(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({ord_} integer, {stage_definitions}, "
            f"{tenant} text); TRUNCATE {stage}"
        ),
        stage=stage.strip('"'),
        stage_columns=(ORD, *target.column_names, TENANT),
        existing=(
            f"SELECT s.{ord_} AS ord, {same} AS same FROM {stage} s {probe}"
        ),
        # Rows go in key order so that two transactions touching the same rows take their
        # locks in the same order and cannot deadlock.
        write=(
            f"INSERT INTO {table} ({col_list}) SELECT {col_list} FROM {stage} "
            f"WHERE {ord_} = ANY($1::int[]) ORDER BY {key_list} "
            f"ON CONFLICT ({key_list}) DO UPDATE SET {updates}"
        ),
        write_all=(
            f"INSERT INTO {table} ({col_list}) SELECT {col_list} FROM {stage} "
            f"ORDER BY {key_list} ON CONFLICT ({key_list}) DO UPDATE SET {updates}"
        ),
        existing_of=(
            f"SELECT s.{ord_} AS ord, {same} AS same FROM {stage} s {probe} "
            f"WHERE s.{ord_} = ANY($1::int[])"
        ),
        insert_new=(
            f"WITH i AS (INSERT INTO {table} ({col_list}) SELECT {col_list} FROM {stage} "
            f"WHERE {ord_} = ANY($1::int[]) ORDER BY {key_list} ON CONFLICT ({key_list}) DO NOTHING "
            f"RETURNING {key_list}) SELECT s.{ord_} AS ord FROM {stage} s JOIN i ON {inserted_join}"
        ),
        insert_new_all=(
            f"WITH i AS (INSERT INTO {table} ({col_list}) SELECT {col_list} FROM {stage} "
            f"ORDER BY {key_list} ON CONFLICT ({key_list}) DO NOTHING "
            f"RETURNING {key_list}) SELECT s.{ord_} AS ord FROM {stage} s JOIN i ON {inserted_join}"
        ),
        rows_source=rows_source,
        existing_in_arrays=f"SELECT s.{ord_} - 1 AS ord, {same} AS same FROM {rows_source} {probe}",
        delete=(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT p.ctid FROM {stage} s "
            f"CROSS JOIN LATERAL (SELECT t.ctid FROM {table} t WHERE {key_join} LIMIT 1) p "
            f"WHERE s.{ord_} = ANY($1::int[])))"
        ),
    )


JOBS_DDL = """
CREATE TABLE IF NOT EXISTS sluice_jobs (
    job_id          text PRIMARY KEY,
    target          text NOT NULL,
    operation       text NOT NULL,
    source          text NOT NULL,
    state           text NOT NULL,
    records_received bigint NOT NULL DEFAULT 0,
    succeeded       bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    duplicates      bigint NOT NULL DEFAULT 0,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    accepted_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
-- Added after the first release: existing installations gain them in place.
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS aborted bigint NOT NULL DEFAULT 0;
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS progressed_at timestamptz;
-- Tenant isolation: the submitter's tenant owns the job (NULL for Kafka producer jobs).
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS tenant text;
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS principal text;
-- The submission's Idempotency-Key (hashed, tenant-scoped) and request fingerprint: a
-- retry after the web process died between sealing and answering finds its job here.
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS idempotency_key text;
-- Set while a job makes no progress for SLUICE_JOB_STALL_TIMEOUT_S (reason says so), cleared
-- by its next progress: a stalled job is shown and counted, never failed for it.
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS stalled_since timestamptz;
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS request_fingerprint text;
CREATE INDEX IF NOT EXISTS sluice_jobs_idempotency_key
    ON sluice_jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Unfinished jobs only (the states of app/store/jobs.py's _RUNNING): the backlog that
-- admission control and the queue gauges read, and the stall sweep, without scanning the
-- finished jobs kept for the whole results retention.
CREATE INDEX IF NOT EXISTS sluice_jobs_unfinished
    ON sluice_jobs (accepted_at) WHERE state IN ('accepted', 'processing');
-- A tenant's jobs, newest first: GET /v1/bulk-operations pages through them by key.
CREATE INDEX IF NOT EXISTS sluice_jobs_by_tenant
    ON sluice_jobs (tenant, created_at DESC, job_id DESC);
CREATE TABLE IF NOT EXISTS sluice_consumer_positions (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);
-- Bumped by each worker that is assigned the partition: a write carrying an older epoch
-- (a worker that lost the partition and does not know yet) is refused.
ALTER TABLE sluice_consumer_positions ADD COLUMN IF NOT EXISTS owner_epoch bigint NOT NULL DEFAULT 0;
-- The records topic's ID (KIP-516) the position counts in: a topic deleted and created
-- again (the embedded broker's are, at every start) starts over at its first offset.
ALTER TABLE sluice_consumer_positions ADD COLUMN IF NOT EXISTS topic_id text;
-- A submission still receiving after this moment (database clock) has died: it is failed.
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS receive_deadline timestamptz;
-- The job whose failed records this one sends again (`retry_of`), of the same tenant and target.
ALTER TABLE sluice_jobs ADD COLUMN IF NOT EXISTS retry_of text;
-- Records-topic messages that could not be read as envelopes: kept, never silently skipped.
CREATE TABLE IF NOT EXISTS sluice_undeliverable (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    job_id      text,
    records     integer NOT NULL,
    reason      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
"""
"""Sluice's own bookkeeping (the outcomes ledger is app/store/ledger.py's).
sluice_consumer_positions holds, per records partition, the offset after the last
envelope written, committed with the rows: where to resume, whatever Kafka remembers."""
