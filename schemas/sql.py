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


def quote(identifier: str) -> str:
    """Quote an SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def _scratch_name(prefix: str, target_name: str) -> str:
    """A staging table name unique per target within PostgreSQL's 63-byte identifiers."""
    digest = hashlib.blake2b(target_name.encode(), digest_size=4).hexdigest()
    return f"{prefix}{target_name[:32]}_{digest}"


@dataclass(frozen=True, slots=True)
class TargetStatements:
    """Every statement the sink needs for one target."""

    create_table: str
    prepare_stage: str
    """Create the session's staging table if missing and empty it, in one round trip."""
    prepare_key_stage: str
    stage: str
    key_stage: str
    stage_columns: tuple[str, ...]
    key_stage_columns: tuple[str, ...]
    insert: str
    """Insert staged rows, skipping existing keys; returns the _ord of rows inserted."""
    insert_all: str
    """Insert staged rows, skipping existing keys; the command tag tells how many went in."""
    upsert: str
    lock_for_delete: str
    delete: str
    """Delete rows by staged keys (existing or not: deleting is idempotent)."""


def statements_for(target: Target) -> TargetStatements:
    """Build the SQL for one target."""
    table = quote(target.name)
    stage = quote(_scratch_name("_sluice_stage_", target.name))
    key_stage = quote(_scratch_name("_sluice_keys_", target.name))
    cols = [quote(c.name) for c in target.columns]
    keys = [quote(k) for k in target.key]
    col_list = ", ".join(cols)
    key_list = ", ".join(keys)
    definitions = ", ".join(
        f"{quote(c.name)} {c.pg_type}{'' if c.nullable else ' NOT NULL'}" for c in target.columns
    )
    key_columns = [c for c in target.columns if c.name in target.key]
    key_definitions = ", ".join(f"{quote(c.name)} {c.pg_type}" for c in key_columns)
    join_on = " AND ".join(f"s.{k} = i.{k}" for k in keys)
    key_join = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    non_keys = [quote(c.name) for c in target.columns if c.name not in target.key]
    if non_keys:
        on_conflict = "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in non_keys)
    else:
        on_conflict = "DO NOTHING"
    # Rows are written in key order so that two transactions touching the same rows
    # take their locks in the same order and cannot deadlock.
    ordered_select = f"SELECT {col_list} FROM {stage} ORDER BY {key_list}"
    return TargetStatements(
        create_table=f"CREATE TABLE IF NOT EXISTS {table} ({definitions}, PRIMARY KEY ({key_list}))",
        prepare_stage=(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
            f"({quote(ORD)} integer, {', '.join(f'{quote(c.name)} {c.pg_type}' for c in target.columns)});"
            f" TRUNCATE {stage}"
        ),
        prepare_key_stage=(
            f"CREATE TEMP TABLE IF NOT EXISTS {key_stage} ({quote(ORD)} integer, {key_definitions});"
            f" TRUNCATE {key_stage}"
        ),
        stage=stage.strip('"'),
        key_stage=key_stage.strip('"'),
        stage_columns=(ORD, *target.column_names),
        key_stage_columns=(ORD, *target.key),
        insert=(
            f"WITH i AS (INSERT INTO {table} ({col_list}) {ordered_select} "
            f"ON CONFLICT ({key_list}) DO NOTHING RETURNING {key_list}) "
            f"SELECT s.{quote(ORD)} FROM {stage} s JOIN i ON {join_on}"
        ),
        insert_all=f"INSERT INTO {table} ({col_list}) {ordered_select} ON CONFLICT ({key_list}) DO NOTHING",
        upsert=(
            f"INSERT INTO {table} ({col_list}) {ordered_select} "
            f"ON CONFLICT ({key_list}) {on_conflict}"
        ),
        lock_for_delete=(
            # Lock the doomed rows in key order first, for the same reason as above.
            f"SELECT 1 FROM {table} t JOIN {key_stage} s ON {key_join} "
            f"ORDER BY {', '.join(f't.{k}' for k in keys)} FOR UPDATE OF t"
        ),
        delete=f"DELETE FROM {table} t USING {key_stage} s WHERE {key_join}",
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
CREATE TABLE IF NOT EXISTS sluice_consumer_positions (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);
CREATE TABLE IF NOT EXISTS sluice_record_results (
    job_id   text NOT NULL,
    idx      bigint NOT NULL,
    status   text NOT NULL,
    key      text,
    code     text,
    message  text,
    PRIMARY KEY (job_id, idx)
);
"""
"""Sluice's own bookkeeping. sluice_record_results doubles as the ledger that makes a
replayed envelope harmless: a (job_id, idx) already there was already applied.
sluice_consumer_positions holds, per records partition, the offset after the last
envelope written, committed with the rows: where to resume, whatever Kafka remembers."""
