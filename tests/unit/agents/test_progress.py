"""Report-agent helpers: merging job snapshots and the published job report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.progress import audit_fields, job_report, next_progress, processed

CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REPORT_FIELDS = [
    "job_id", "target", "operation", "source", "state", "records_received",
    "succeeded", "failed", "duplicates", "created_at", "accepted_at", "completed_at", "tenant",
]


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


# --- next_progress -----------------------------------------------------------------


def test_first_snapshot_is_stored_unreported() -> None:
    merged, due = next_progress({}, _snap(3))
    assert due is False
    assert merged == {**_snap(3), "reported": False}


def test_a_larger_snapshot_replaces_a_smaller_one() -> None:
    current, _ = next_progress({}, _snap(3))
    merged, due = next_progress(current, _snap(5, 1))
    assert due is False
    assert merged["succeeded"] == 5
    assert merged["failed"] == 1
    assert processed(merged) == 6


def test_a_smaller_snapshot_never_replaces_a_larger_one() -> None:
    current, _ = next_progress({}, _snap(6, 1))
    merged, due = next_progress(current, _snap(2))
    assert due is False
    assert merged is current
    assert merged["succeeded"] == 6


def test_a_smaller_terminal_snapshot_is_ignored_too() -> None:
    current, _ = next_progress({}, _snap(8, state="processing"))
    merged, due = next_progress(current, _snap(5, state="completed"))
    assert due is False
    assert merged["state"] == "processing"
    assert merged["reported"] is False


@pytest.mark.parametrize(
    "state", ["completed", "completed_with_errors", "failed", "aborted"]
)
def test_report_is_due_when_a_terminal_snapshot_first_arrives(state: str) -> None:
    current, due = next_progress({}, _snap(4, state="processing"))
    assert due is False
    merged, due = next_progress(current, _snap(8, 2, state=state))
    assert due is True
    assert merged["reported"] is True
    assert merged["state"] == state


def test_an_equal_snapshot_replaces_stored_progress() -> None:
    # Same counts, newer state: the job must still get its report.
    current, _ = next_progress({}, _snap(10, state="processing"))
    merged, due = next_progress(current, _snap(10, state="completed"))
    assert due is True
    assert merged["state"] == "completed"
    assert merged["reported"] is True


def test_report_is_due_only_once() -> None:
    final = _snap(8, 2, state="completed_with_errors")
    current, first = next_progress({}, final)
    assert first is True
    again, second = next_progress(current, dict(final))
    assert second is False
    assert again["reported"] is True


def test_a_terminal_first_snapshot_is_due_at_once() -> None:
    merged, due = next_progress({}, _snap(10, state="completed"))
    assert due is True
    assert merged["reported"] is True


@pytest.mark.parametrize("state", ["receiving", "processing", None])
def test_non_terminal_snapshots_are_never_due(state: str | None) -> None:
    current: dict[str, Any] = {}
    for n in range(1, 5):
        current, due = next_progress(current, _snap(n, state=state))
        assert due is False
    assert current["reported"] is False


def test_reported_flag_survives_later_merges() -> None:
    current, due = next_progress({}, _snap(5, state="completed"))
    assert due is True
    # A producer-stream job keeps growing after a terminal snapshot was reported.
    current, due = next_progress(current, _snap(7, state="processing"))
    assert due is False
    assert current["reported"] is True
    current, due = next_progress(current, _snap(9, state="completed"))
    assert due is False
    assert current["reported"] is True
    assert current["succeeded"] == 9


def test_snapshot_reported_member_is_not_trusted() -> None:
    # Only stored progress decides whether the report went out.
    merged, due = next_progress({}, _snap(10, state="completed", reported=True))
    assert due is True
    assert merged["reported"] is True
    merged, due = next_progress({"reported": True, **_snap(2)}, _snap(3, reported=False))
    assert due is False
    assert merged["reported"] is True


def test_inputs_are_not_mutated() -> None:
    current = {**_snap(1), "reported": False}
    snapshot = _snap(10, state="completed")
    current_before, snapshot_before = dict(current), dict(snapshot)
    next_progress(current, snapshot)
    assert current == current_before
    assert snapshot == snapshot_before


@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data(), steps=st.integers(min_value=1, max_value=8))
def test_any_delivery_order_reports_exactly_once(data: st.DataObject, steps: int) -> None:
    # A job's history: strictly growing counts, terminal only at the end.
    increments = data.draw(st.lists(st.integers(1, 5), min_size=steps, max_size=steps))
    history = []
    total = 0
    for n, increment in enumerate(increments):
        total += increment
        state = "completed" if n == steps - 1 else "processing"
        history.append(_snap(total, state=state))
    # Delivered out of order, each at least once, some more than once.
    extra = data.draw(st.lists(st.sampled_from(history), max_size=6))
    deliveries = data.draw(st.permutations(history + extra))

    current: dict[str, Any] = {}
    reports = 0
    for snapshot in deliveries:
        current, due = next_progress(current, snapshot)
        reports += due
    assert reports == 1
    assert current["reported"] is True
    assert processed(current) == total
    assert current["state"] == "completed"


# --- job_report --------------------------------------------------------------------


def test_job_report_fields_and_values() -> None:
    completed = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    snapshot = _snap(
        8, 2, 0, state="completed_with_errors",
        created_at=CREATED, accepted_at=CREATED, completed_at=completed,
        updated_at=completed, reported=True,
    )
    report = orjson.loads(job_report(snapshot))
    assert list(report) == REPORT_FIELDS
    assert report["job_id"] == "job-1"
    assert report["state"] == "completed_with_errors"
    assert report["records_received"] == 10
    assert (report["succeeded"], report["failed"], report["duplicates"]) == (8, 2, 0)
    assert report["source"] == "http"
    assert datetime.fromisoformat(report["created_at"]) == CREATED
    assert datetime.fromisoformat(report["completed_at"]) == completed
    # Bookkeeping members stay internal.
    assert "reported" not in report
    assert "updated_at" not in report


def test_job_report_missing_members_are_null() -> None:
    report = orjson.loads(job_report({"job_id": "job-2", "state": "failed"}))
    assert list(report) == REPORT_FIELDS
    assert report["job_id"] == "job-2"
    assert report["state"] == "failed"
    assert all(report[k] is None for k in REPORT_FIELDS if k not in ("job_id", "state"))


def test_job_report_from_a_decoded_results_message() -> None:
    # The report agent sees snapshots as JSON, datetimes already strings.
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
