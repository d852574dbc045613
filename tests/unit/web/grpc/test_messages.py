"""Job rows and operations as BulkIngest messages."""

from __future__ import annotations

import datetime as dt

from schemas.vocabulary import JobState, Operation
from web.grpc import bulk_ingest_pb2 as pb
from web.grpc.messages import OPERATIONS, STATES, job_message, requested_operation

CREATED = dt.datetime(2023, 10, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _row(**fields: object) -> dict[str, object]:
    return {"job_id": "j1", "target": "sensor_readings", "operation": "upsert", "state": "failed",
            "records_received": 7, "succeeded": 3, "failed": 2, "duplicates": 1, "aborted": 1,
            "reason": "the payload was refused", "retry_of": None, "created_at": CREATED,
            "accepted_at": None, "updated_at": CREATED, "completed_at": None, **fields}


def test_every_state_and_operation_has_its_enum_value() -> None:
    assert set(STATES) == set(JobState) and pb.JOB_STATE_UNSPECIFIED not in STATES.values()
    assert set(OPERATIONS) == set(Operation) and pb.OPERATION_UNSPECIFIED not in OPERATIONS.values()


def test_a_job_row_is_the_job_get_shows() -> None:
    job = job_message(_row(), final=True)
    assert (job.job_id, job.target, job.operation, job.state, job.final) == (
        "j1", "sensor_readings", pb.OPERATION_UPSERT, pb.JOB_STATE_FAILED, True)
    assert (job.counts.received, job.counts.succeeded, job.counts.failed, job.counts.duplicates,
            job.counts.aborted) == (7, 3, 2, 1, 1)
    assert job.reason == "the payload was refused" and not job.HasField("retry_of")
    assert job.created_at.ToDatetime(dt.UTC) == CREATED
    assert not job.HasField("accepted_at") and not job.HasField("completed_at")


def test_an_unset_reason_stays_unset() -> None:
    assert not job_message(_row(reason=None, state="completed")).HasField("reason")


def test_the_header_operation_is_what_the_query_string_would_say() -> None:
    assert requested_operation(pb.OPERATION_UNSPECIFIED) is None
    assert requested_operation(pb.OPERATION_DELETE) == "delete"
    assert requested_operation(42) == "42"  # a newer client's: refused as unknown
