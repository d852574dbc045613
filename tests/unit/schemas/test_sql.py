"""SQL text for targets: identifier quoting, key order, conflict handling and bookkeeping DDL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from schemas.sql import JOBS_DDL, ORD, TENANT, TargetStatements, quote, statements_for
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_target, load_targets

PG_IDENTIFIER_BYTES = 63


def _target(directory: Path, **schema: Any) -> Target:
    document: dict[str, Any] = {"type": "record"}
    document.update(schema)
    path = directory / f"{document['name']}.avsc"
    path.write_text(json.dumps(document))
    return load_target(path)


@pytest.fixture(scope="module")
def sensor() -> TargetStatements:
    return statements_for(load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"])


@pytest.fixture
def key_only(tmp_path: Path) -> TargetStatements:
    # Key declared in the opposite order to the fields, and no other column.
    return statements_for(
        _target(
            tmp_path,
            name="tags",
            fields=[{"name": "tag", "type": "string"}, {"name": "owner", "type": "long"}],
            **{"sluice.key": ["owner", "tag"]},
        )
    )


@pytest.fixture
def reordered(tmp_path: Path) -> TargetStatements:
    return statements_for(
        _target(
            tmp_path,
            name="metrics",
            fields=[
                {"name": "a", "type": "long"},
                {"name": "b", "type": "string"},
                {"name": "c", "type": ["null", "double"]},
                {"name": "d", "type": "boolean"},
            ],
            **{"sluice.key": ["b", "a"]},
        )
    )


# --- quote -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "quoted"),
    [
        ("plain", '"plain"'),
        ('a"b', '"a""b"'),
        ('"', '""""'),
        ("", '""'),
        ("Mixed Case", '"Mixed Case"'),
        ("semi;colon", '"semi;colon"'),
    ],
)
def test_quote(identifier: str, quoted: str) -> None:
    assert quote(identifier) == quoted


# --- the built-in target -----------------------------------------------------------


def test_create_table(sensor: TargetStatements) -> None:
    assert sensor.create_table == (
        'CREATE TABLE IF NOT EXISTS "sensor_readings" ('
        '"sensor_id" text NOT NULL, "value" double precision NOT NULL, '
        '"sampled_at" timestamptz NOT NULL, "_sluice_tenant" text, '
        'PRIMARY KEY ("sensor_id", "sampled_at"))'
    )
    assert sensor.add_tenant_column == (
        'ALTER TABLE "sensor_readings" ADD COLUMN IF NOT EXISTS "_sluice_tenant" text')


def test_stage_table_name_is_stable(sensor: TargetStatements) -> None:
    assert re.fullmatch(r"_sluice_stage_sensor_readings_[0-9a-f]{8}", sensor.stage)
    again = statements_for(load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"])
    assert again.stage == sensor.stage


def test_stage_table(sensor: TargetStatements) -> None:
    stage = sensor.stage
    assert sensor.stage_columns == (ORD, "sensor_id", "value", "sampled_at", TENANT)
    # One round trip: create the session's staging table if missing, then empty it.
    assert sensor.prepare_stage == (
        f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" ('
        '"_sluice_ord" integer, "sensor_id" text, "value" double precision, '
        f'"sampled_at" timestamptz, "_sluice_tenant" text); TRUNCATE "{stage}"'
    )


def test_existing_probes_the_key_index_once_per_staged_row(sensor: TargetStatements) -> None:
    # LATERAL ... LIMIT 1: never a hash join over the whole target table.
    assert sensor.existing == (
        f'SELECT s."_sluice_ord" AS ord, (t."value", t."_sluice_tenant") IS NOT DISTINCT FROM '
        f'(s."value", s."_sluice_tenant") AS same FROM "{sensor.stage}" s '
        'CROSS JOIN LATERAL (SELECT * FROM "sensor_readings" t '
        'WHERE t."sensor_id" = s."sensor_id" AND t."sampled_at" = s."sampled_at" LIMIT 1) t'
    )


def test_write_replaces_values_and_tenant_by_key(sensor: TargetStatements) -> None:
    assert sensor.write == (
        'INSERT INTO "sensor_readings" ("sensor_id", "value", "sampled_at", "_sluice_tenant") '
        'SELECT "sensor_id", "value", "sampled_at", "_sluice_tenant" '
        f'FROM "{sensor.stage}" WHERE "_sluice_ord" = ANY($1::int[]) '
        'ORDER BY "sensor_id", "sampled_at" ON CONFLICT ("sensor_id", "sampled_at") '
        'DO UPDATE SET "value" = EXCLUDED."value", "_sluice_tenant" = EXCLUDED."_sluice_tenant"'
    )
    assert sensor.write_all == sensor.write.replace(' WHERE "_sluice_ord" = ANY($1::int[])', "")


def test_insert_new_skips_existing_keys_and_returns_the_inserted_ords(
    sensor: TargetStatements,
) -> None:
    stage = sensor.stage
    assert sensor.insert_new == (
        'WITH i AS (INSERT INTO "sensor_readings" ("sensor_id", "value", "sampled_at", '
        '"_sluice_tenant") SELECT "sensor_id", "value", "sampled_at", "_sluice_tenant" '
        f'FROM "{stage}" WHERE "_sluice_ord" = ANY($1::int[]) ORDER BY "sensor_id", "sampled_at" '
        'ON CONFLICT ("sensor_id", "sampled_at") DO NOTHING RETURNING "sensor_id", "sampled_at") '
        f'SELECT s."_sluice_ord" AS ord FROM "{stage}" s JOIN i '
        'ON i."sensor_id" = s."sensor_id" AND i."sampled_at" = s."sampled_at"'
    )
    assert sensor.insert_new_all == sensor.insert_new.replace(
        ' WHERE "_sluice_ord" = ANY($1::int[])', "")
    assert sensor.existing_of == sensor.existing + ' WHERE s."_sluice_ord" = ANY($1::int[])'


def test_delete_by_staged_keys_through_the_key_index(sensor: TargetStatements) -> None:
    assert sensor.delete == (
        'DELETE FROM "sensor_readings" WHERE ctid = ANY(ARRAY(SELECT p.ctid FROM '
        f'"{sensor.stage}" s CROSS JOIN LATERAL (SELECT t.ctid FROM "sensor_readings" t '
        'WHERE t."sensor_id" = s."sensor_id" AND t."sampled_at" = s."sampled_at" LIMIT 1) p '
        'WHERE s."_sluice_ord" = ANY($1::int[])))'
    )


def test_key_only_target_compares_and_updates_the_tenant(key_only: TargetStatements) -> None:
    assert '(t."_sluice_tenant") IS NOT DISTINCT FROM (s."_sluice_tenant")' in key_only.existing
    assert key_only.write.endswith(
        'ON CONFLICT ("owner", "tag") DO UPDATE SET "_sluice_tenant" = EXCLUDED."_sluice_tenant"')
    assert key_only.create_table == (
        'CREATE TABLE IF NOT EXISTS "tags" ("tag" text NOT NULL, "owner" bigint NOT NULL, '
        '"_sluice_tenant" text, PRIMARY KEY ("owner", "tag"))'
    )


def test_rows_are_written_in_key_order(reordered: TargetStatements) -> None:
    assert 'ORDER BY "b", "a" ON CONFLICT ("b", "a")' in reordered.write


def test_columns_keep_declared_order(reordered: TargetStatements) -> None:
    assert reordered.write.startswith(
        'INSERT INTO "metrics" ("a", "b", "c", "d", "_sluice_tenant") '
        'SELECT "a", "b", "c", "d", "_sluice_tenant" FROM'
    )
    assert reordered.stage_columns == (ORD, "a", "b", "c", "d", TENANT)


def test_nullable_columns_have_no_not_null(reordered: TargetStatements) -> None:
    assert reordered.create_table == (
        'CREATE TABLE IF NOT EXISTS "metrics" ("a" bigint NOT NULL, "b" text NOT NULL, '
        '"c" double precision, "d" boolean NOT NULL, "_sluice_tenant" text, PRIMARY KEY ("b", "a"))'
    )
    # The staging table carries no constraints: the table's own rules are checked apart.
    assert "NOT NULL" not in reordered.prepare_stage


def test_every_type_maps_to_its_pg_type(tmp_path: Path) -> None:
    statements = statements_for(
        _target(
            tmp_path,
            name="everything",
            fields=[
                {"name": "s", "type": "string"},
                {"name": "i", "type": "int"},
                {"name": "l", "type": "long"},
                {"name": "f", "type": "float"},
                {"name": "d", "type": "double"},
                {"name": "b", "type": "boolean"},
                {"name": "tm", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "tu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "dt", "type": {"type": "int", "logicalType": "date"}},
            ],
            **{"sluice.key": ["s"]},
        )
    )
    assert statements.prepare_stage.startswith(
        f'CREATE TEMP TABLE IF NOT EXISTS "{statements.stage}" ("_sluice_ord" integer, '
        '"s" text, "i" integer, "l" bigint, "f" real, "d" double precision, "b" boolean, '
        '"tm" timestamptz, "tu" timestamptz, "dt" date, "_sluice_tenant" text);'
    )


def test_staging_identifiers_stay_distinct_within_postgres_limit(tmp_path: Path) -> None:
    fields = [{"name": "id", "type": "long"}]
    names = ["r" * 62 + "x", "r" * 62 + "y"]  # both valid: [a-z_][a-z0-9_]{0,62}
    statements = [
        statements_for(_target(tmp_path, name=n, fields=fields, **{"sluice.key": ["id"]}))
        for n in names
    ]

    def as_postgres_sees_it(identifier: str) -> str:
        return identifier.encode()[:PG_IDENTIFIER_BYTES].decode()

    assert as_postgres_sees_it(statements[0].stage) != as_postgres_sees_it(statements[1].stage)
    for statement in statements:
        assert len(statement.stage.encode()) <= PG_IDENTIFIER_BYTES, statement.stage
        assert f'"{statement.stage}"' in statement.prepare_stage


# --- bookkeeping -------------------------------------------------------------------


def test_jobs_ddl_creates_the_bookkeeping_tables() -> None:
    for table in ("sluice_jobs", "sluice_consumer_positions", "sluice_undeliverable"):
        assert f"CREATE TABLE IF NOT EXISTS {table} (" in JOBS_DDL
    assert "job_id          text PRIMARY KEY" in JOBS_DDL


def test_jobs_ddl_has_the_counters_the_sink_updates() -> None:
    jobs_table = JOBS_DDL.split("CREATE TABLE IF NOT EXISTS sluice_consumer_positions")[0]
    for column in ("records_received", "succeeded", "failed", "duplicates", "state",
                   "reason", "created_at", "accepted_at", "updated_at", "completed_at"):
        assert re.search(rf"^\s+{column}\s", jobs_table, re.MULTILINE), column
