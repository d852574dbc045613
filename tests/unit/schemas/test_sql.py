"""SQL text for targets: identifier quoting, key order, conflict handling and bookkeeping DDL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from schemas.sql import JOBS_DDL, ORD, TargetStatements, quote, statements_for
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
        '"sampled_at" timestamptz NOT NULL, PRIMARY KEY ("sensor_id", "sampled_at"))'
    )


def test_stage_table_names(sensor: TargetStatements) -> None:
    assert re.fullmatch(r"_sluice_stage_sensor_readings_[0-9a-f]{8}", sensor.stage)
    assert re.fullmatch(r"_sluice_keys_sensor_readings_[0-9a-f]{8}", sensor.key_stage)
    again = statements_for(load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"])
    assert (again.stage, again.key_stage) == (sensor.stage, sensor.key_stage)


def test_stage_tables(sensor: TargetStatements) -> None:
    stage, keys = sensor.stage, sensor.key_stage
    assert sensor.stage_columns == (ORD, "sensor_id", "value", "sampled_at")
    assert sensor.key_stage_columns == (ORD, "sensor_id", "sampled_at")
    # One round trip: create the session's staging table if missing, then empty it.
    assert sensor.prepare_stage == (
        f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" ('
        '"_sluice_ord" integer, "sensor_id" text, "value" double precision, '
        f'"sampled_at" timestamptz); TRUNCATE "{stage}"'
    )
    assert sensor.prepare_key_stage == (
        f'CREATE TEMP TABLE IF NOT EXISTS "{keys}" ('
        f'"_sluice_ord" integer, "sensor_id" text, "sampled_at" timestamptz); TRUNCATE "{keys}"'
    )


def test_insert_all_reports_its_count_in_the_command_tag(sensor: TargetStatements) -> None:
    assert sensor.insert_all == (
        'INSERT INTO "sensor_readings" ("sensor_id", "value", "sampled_at") '
        f'SELECT "sensor_id", "value", "sampled_at" FROM "{sensor.stage}" '
        'ORDER BY "sensor_id", "sampled_at" ON CONFLICT ("sensor_id", "sampled_at") DO NOTHING'
    )


def test_insert_skips_existing_keys_and_returns_ordinals(sensor: TargetStatements) -> None:
    stage = sensor.stage
    assert sensor.insert == (
        'WITH i AS (INSERT INTO "sensor_readings" ("sensor_id", "value", "sampled_at") '
        f'SELECT "sensor_id", "value", "sampled_at" FROM "{stage}" '
        'ORDER BY "sensor_id", "sampled_at" '
        'ON CONFLICT ("sensor_id", "sampled_at") DO NOTHING '
        'RETURNING "sensor_id", "sampled_at") '
        f'SELECT s."_sluice_ord" FROM "{stage}" s '
        'JOIN i ON s."sensor_id" = i."sensor_id" AND s."sampled_at" = i."sampled_at"'
    )


def test_upsert_updates_non_key_columns(sensor: TargetStatements) -> None:
    assert sensor.upsert == (
        'INSERT INTO "sensor_readings" ("sensor_id", "value", "sampled_at") '
        f'SELECT "sensor_id", "value", "sampled_at" FROM "{sensor.stage}" '
        'ORDER BY "sensor_id", "sampled_at" '
        'ON CONFLICT ("sensor_id", "sampled_at") DO UPDATE SET "value" = EXCLUDED."value"'
    )


def test_delete_statements(sensor: TargetStatements) -> None:
    assert sensor.lock_for_delete == (
        f'SELECT 1 FROM "sensor_readings" t JOIN "{sensor.key_stage}" s '
        'ON t."sensor_id" = s."sensor_id" AND t."sampled_at" = s."sampled_at" '
        'ORDER BY t."sensor_id", t."sampled_at" FOR UPDATE OF t'
    )
    assert sensor.delete == (
        f'DELETE FROM "sensor_readings" t USING "{sensor.key_stage}" s '
        'WHERE t."sensor_id" = s."sensor_id" AND t."sampled_at" = s."sampled_at"'
    )


# --- a key-only target -------------------------------------------------------------


def test_key_only_upsert_does_nothing_on_conflict(key_only: TargetStatements) -> None:
    assert key_only.upsert.endswith('ON CONFLICT ("owner", "tag") DO NOTHING')
    assert "DO UPDATE" not in key_only.upsert
    assert "EXCLUDED" not in key_only.upsert


def test_key_only_insert_still_returns_inserted_ordinals(key_only: TargetStatements) -> None:
    assert 'ON CONFLICT ("owner", "tag") DO NOTHING RETURNING "owner", "tag"' in key_only.insert
    assert key_only.insert.endswith(
        'JOIN i ON s."owner" = i."owner" AND s."tag" = i."tag"'
    )


def test_key_only_create_table(key_only: TargetStatements) -> None:
    assert key_only.create_table == (
        'CREATE TABLE IF NOT EXISTS "tags" ("tag" text NOT NULL, "owner" bigint NOT NULL, '
        'PRIMARY KEY ("owner", "tag"))'
    )


# --- key order ---------------------------------------------------------------------


def test_rows_are_written_in_key_order(reordered: TargetStatements) -> None:
    ordered = f'FROM "{reordered.stage}" ORDER BY "b", "a" ON CONFLICT ("b", "a")'
    assert ordered in reordered.insert
    assert ordered in reordered.upsert
    assert reordered.lock_for_delete.endswith('ORDER BY t."b", t."a" FOR UPDATE OF t')


def test_columns_keep_declared_order(reordered: TargetStatements) -> None:
    assert reordered.upsert.startswith(
        'INSERT INTO "metrics" ("a", "b", "c", "d") SELECT "a", "b", "c", "d" FROM'
    )
    assert reordered.stage_columns == (ORD, "a", "b", "c", "d")
    # The key stage is filled with key values in key order, by column name.
    assert reordered.key_stage_columns == (ORD, "b", "a")


def test_upsert_sets_every_non_key_column(reordered: TargetStatements) -> None:
    assert reordered.upsert.endswith('DO UPDATE SET "c" = EXCLUDED."c", "d" = EXCLUDED."d"')


def test_nullable_columns_have_no_not_null(reordered: TargetStatements) -> None:
    assert reordered.create_table == (
        'CREATE TABLE IF NOT EXISTS "metrics" ("a" bigint NOT NULL, "b" text NOT NULL, '
        '"c" double precision, "d" boolean NOT NULL, PRIMARY KEY ("b", "a"))'
    )
    # Staging tables carry no constraints: bad rows are found by the real insert.
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
        '"tm" timestamptz, "tu" timestamptz, "dt" date);'
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
    assert as_postgres_sees_it(statements[0].key_stage) != as_postgres_sees_it(
        statements[1].key_stage
    )
    for statement in statements:
        for identifier in (statement.stage, statement.key_stage):
            assert len(identifier.encode()) <= PG_IDENTIFIER_BYTES, identifier
            assert f'"{identifier}"' in statement.prepare_stage + statement.prepare_key_stage


# --- bookkeeping -------------------------------------------------------------------


def test_jobs_ddl_creates_both_tables() -> None:
    assert "CREATE TABLE IF NOT EXISTS sluice_jobs (" in JOBS_DDL
    assert "CREATE TABLE IF NOT EXISTS sluice_record_results (" in JOBS_DDL
    assert "job_id          text PRIMARY KEY" in JOBS_DDL
    assert "PRIMARY KEY (job_id, idx)" in JOBS_DDL


def test_jobs_ddl_has_the_counters_the_sink_updates() -> None:
    jobs_table = JOBS_DDL.split("CREATE TABLE IF NOT EXISTS sluice_record_results")[0]
    for column in ("records_received", "succeeded", "failed", "duplicates", "state",
                   "reason", "created_at", "accepted_at", "updated_at", "completed_at"):
        assert re.search(rf"^\s+{column}\s", jobs_table, re.MULTILINE), column
    results_table = JOBS_DDL.split("CREATE TABLE IF NOT EXISTS sluice_record_results")[1]
    for column in ("job_id", "idx", "status", "key", "code", "message"):
        assert re.search(rf"^\s+{column}\s", results_table, re.MULTILINE), column
