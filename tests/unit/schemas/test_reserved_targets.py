"""Target names that would collide with Sluice's own relations or PostgreSQL's are refused
when the schemas load, before any table is created or written."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from app.store import ledger, reports
from schemas.sql import JOBS_DDL, statements_for
from schemas.targets import Column, ColumnType, Target, TargetSchemaError, load_target, load_targets


def _schema(name: str) -> dict[str, Any]:
    return {"type": "record", "name": name, "sluice.key": ["id"],
            "fields": [{"name": "id", "type": "long"}]}


def _write(directory: Path, name: str) -> Path:
    path = directory / f"{name}.avsc"
    path.write_text(json.dumps(_schema(name)))
    return path


def _sluice_relations() -> set[str]:
    """Every table and index Sluice creates, read from the DDL it runs (and the names it derives)."""
    ddl = "\n".join([JOBS_DDL, reports.DDL, ledger.DDL, ledger.VIEW_DDL])
    names = set(re.findall(r"CREATE (?:TEMP )?(?:TABLE|INDEX) IF NOT EXISTS (\w+)", ddl))
    names |= set(re.findall(r"CREATE OR REPLACE VIEW (\w+)", ddl))
    names.add(ledger.partition_name(date(2024, 1, 31)))  # the ledger's day partitions
    names |= {f"{n}_pkey" for n in names}  # primary-key indexes
    # The staging table of a target with an ordinary name.
    names.add(statements_for(Target("readings", (Column("id", ColumnType.LONG, False),), ("id",),
                                    {})).stage)
    return names


def test_the_ddl_scan_finds_sluice_s_tables() -> None:
    relations = _sluice_relations()
    assert {"sluice_jobs", "sluice_record_results", "sluice_outcome_blocks",
            "sluice_outcome_blocks_default", "sluice_outcome_blocks_p20240131", "sluice_report_outbox",
            "sluice_consumer_positions", "sluice_undeliverable"} <= relations
    assert any(n.startswith("_sluice_stage_") for n in relations)


@pytest.mark.parametrize("name", sorted(_sluice_relations()))
def test_every_relation_sluice_creates_is_refused_as_a_target(tmp_path: Path, name: str) -> None:
    with pytest.raises(TargetSchemaError, match="reserved"):
        load_target(_write(tmp_path, name))


@pytest.mark.parametrize("name", ["sluice_jobs", "sluice_anything", "_sluice_stage_x", "_sluice",
                                  "pg_class", "pg_stat_activity", "pg_"])
def test_reserved_names_are_refused_with_a_clear_error(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name)
    with pytest.raises(TargetSchemaError) as refused:
        load_targets(tmp_path)
    message = str(refused.value)
    assert str(path) in message and repr(name) in message and "reserved" in message


@pytest.mark.parametrize("name", ["sensor_readings", "sluicegate", "pgx_events", "my_sluice_jobs",
                                  "spg_class"])
def test_ordinary_names_still_load(tmp_path: Path, name: str) -> None:
    assert load_target(_write(tmp_path, name)).name == name
