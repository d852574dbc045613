"""Progress-agent helpers (merging job snapshots) and the published job report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.progress import merge_progress, processed
from schemas.job_report import REPORT_FIELDS, audit_fields, job_report

CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _snap(succeeded: int, failed: int = 0, duplicates: int = 0,
          state: str = "processing", **extra: Any) -> dict[str, Any]:
    snapshot: dict[str, Any] = {
        "job_id": "job-1", "target": "sensor_readings", "operation": "insert",
        "source": "http", "state": state, "records_received": 10,
        "succeeded": succeeded, "failed": failed, "duplicates": duplicates,
    }
    snapshot.update(extra)
    return snapshot


# --- processed ---------------------------------------------------------------------


def test_processed_sums_the_outcome_counters() -> None:
    assert processed(_snap(3, 2, 1)) == 6
    assert processed({}) == 0
    assert processed({"succeeded": 4}) == 4


# --- merge_progress ----------------------------------------------------------------


def test_first_snapshot_is_stored() -> None:
    assert merge_progress({}, _snap(3)) == _snap(3)


def test_a_larger_snapshot_replaces_a_smaller_one() -> None:
    merged = merge_progress(_snap(3), _snap(5, 1))
    assert (merged["succeeded"], merged["failed"], processed(merged)) == (5, 1, 6)


def test_a_smaller_snapshot_never_replaces_a_larger_one() -> None:
    current = _snap(6, 1)
    assert merge_progress(current, _snap(2)) == current
    assert merge_progress(current, _snap(2, state="completed")) == current


def test_an_equal_snapshot_replaces_stored_progress() -> None:
    merged = merge_progress(_snap(10, state="processing"), _snap(10, state="completed"))
    assert merged["state"] == "completed"


def test_inputs_are_not_mutated() -> None:
    current, snapshot = _snap(1), _snap(2)
    merged = merge_progress(current, snapshot)
    merged["succeeded"] = 99
    assert current == _snap(1) and snapshot == _snap(2)


@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data(), steps=st.integers(min_value=1, max_value=8))
def test_any_delivery_order_ends_at_the_largest_snapshot(data: st.DataObject, steps: int) -> None:
    snapshots = [_snap(n) for n in range(steps)]
    order = data.draw(st.permutations(snapshots))
    current: dict[str, Any] = {}
    for snapshot in order:
        current = merge_progress(current, snapshot)
    assert processed(current) == steps - 1


# --- job report ----------------------------------------------------------------------


def test_job_report_fields_and_values() -> None:
    completed = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    snapshot = _snap(
        8, 2, 0, state="completed_with_errors",
        created_at=CREATED, accepted_at=CREATED, completed_at=completed,
        updated_at=completed, aborted=0,
    )
    report = orjson.loads(job_report(snapshot))
    assert tuple(report) == REPORT_FIELDS
    assert report["job_id"] == "job-1"
    assert report["state"] == "completed_with_errors"
    assert report["records_received"] == 10
    assert (report["succeeded"], report["failed"], report["duplicates"], report["aborted"]) == (
        8, 2, 0, 0)
    assert report["source"] == "http"
    assert datetime.fromisoformat(report["created_at"]) == CREATED
    assert datetime.fromisoformat(report["completed_at"]) == completed
    # Bookkeeping members stay internal.
    assert "updated_at" not in report and "principal" not in report


def test_job_report_missing_members_are_null() -> None:
    report = orjson.loads(job_report({"job_id": "job-2", "state": "failed"}))
    assert tuple(report) == REPORT_FIELDS
    assert report["job_id"] == "job-2"
    assert report["state"] == "failed"
    assert all(report[k] is None for k in REPORT_FIELDS if k not in ("job_id", "state"))


def test_job_report_from_a_decoded_results_message() -> None:
    # The publisher reads snapshots from the outbox as JSON, datetimes already strings.
    snapshot = orjson.loads(orjson.dumps(_snap(10, state="completed", created_at=CREATED)))
    report = orjson.loads(job_report(snapshot))
    assert report["created_at"] == "2024-05-01T12:00:00+00:00"


def test_a_finished_job_audit_line_names_who_what_and_counts_but_no_records() -> None:
    snapshot = {**_snap(8, 1, 1, state="completed_with_errors"), "tenant": "acme",
                "principal": "alice", "aborted": 0}
    fields = audit_fields(snapshot)
    assert fields["audit"] is True
    assert (fields["subject"], fields["tenant"], fields["job_id"]) == ("alice", "acme", "job-1")
    assert (fields["target"], fields["operation"], fields["state"]) == (
        snapshot["target"], snapshot["operation"], "completed_with_errors")
    assert fields["counts"] == {"succeeded": 8, "failed": 1, "duplicates": 1, "aborted": 0}
