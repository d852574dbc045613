"""Sluice's vocabulary as the BulkIngest messages: a job row as a Job, operations both ways."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from schemas.vocabulary import JobState, Operation
from web.grpc import bulk_ingest_pb2 as pb

OPERATIONS: Final[Mapping[Operation, pb.Operation]] = MappingProxyType({
    operation: pb.Operation.Value(f"OPERATION_{operation.name}") for operation in Operation})
STATES: Final[Mapping[JobState, pb.JobState]] = MappingProxyType({
    state: pb.JobState.Value(f"JOB_STATE_{state.name}") for state in JobState})
_OPERATION_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {int(number): operation.value for operation, number in OPERATIONS.items()})


def requested_operation(value: int) -> str | None:
    """The header's operation as HTTP's ``?operation=`` would give it: None when unspecified
    (an insert, and fingerprinted as a request that names none), the number itself when this
    version does not know it (so that it is refused as an unknown operation)."""
    if value == pb.OPERATION_UNSPECIFIED:
        return None
    return _OPERATION_NAMES.get(value, str(value))


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def job_message(job: Mapping[str, Any], *, final: bool = False) -> pb.Job:
    """A ``sluice_jobs`` row (as asyncpg returns it) as the Job GET would show."""
    message = pb.Job(
        job_id=job["job_id"], target=job["target"],
        operation=OPERATIONS.get(job["operation"], pb.OPERATION_UNSPECIFIED),
        state=STATES.get(job["state"], pb.JOB_STATE_UNSPECIFIED),
        counts=pb.Counts(received=job["records_received"], succeeded=job["succeeded"],
                         failed=job["failed"], duplicates=job["duplicates"],
                         aborted=job["aborted"]),
        reason=job.get("reason"), retry_of=job.get("retry_of"), final=final,
        created_at=_timestamp(job.get("created_at")),
        accepted_at=_timestamp(job.get("accepted_at")),
        updated_at=_timestamp(job.get("updated_at")),
        completed_at=_timestamp(job.get("completed_at")),
    )
    return message
