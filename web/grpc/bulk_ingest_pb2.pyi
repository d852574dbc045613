import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_UNSPECIFIED: _ClassVar[Operation]
    OPERATION_INSERT: _ClassVar[Operation]
    OPERATION_UPSERT: _ClassVar[Operation]
    OPERATION_DELETE: _ClassVar[Operation]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_RECEIVING: _ClassVar[JobState]
    JOB_STATE_ACCEPTED: _ClassVar[JobState]
    JOB_STATE_PROCESSING: _ClassVar[JobState]
    JOB_STATE_COMPLETED: _ClassVar[JobState]
    JOB_STATE_COMPLETED_WITH_ERRORS: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_ABORTED: _ClassVar[JobState]
OPERATION_UNSPECIFIED: Operation
OPERATION_INSERT: Operation
OPERATION_UPSERT: Operation
OPERATION_DELETE: Operation
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_RECEIVING: JobState
JOB_STATE_ACCEPTED: JobState
JOB_STATE_PROCESSING: JobState
JOB_STATE_COMPLETED: JobState
JOB_STATE_COMPLETED_WITH_ERRORS: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_ABORTED: JobState

class SubmitHeader(_message.Message):
    __slots__ = ("target", "operation", "idempotency_key", "retry_of")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    target: str
    operation: Operation
    idempotency_key: str
    retry_of: str
    def __init__(self, target: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., idempotency_key: _Optional[str] = ..., retry_of: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("header", "records")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    header: SubmitHeader
    records: bytes
    def __init__(self, header: _Optional[_Union[SubmitHeader, _Mapping]] = ..., records: _Optional[bytes] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Counts(_message.Message):
    __slots__ = ("received", "succeeded", "failed", "duplicates", "aborted")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    received: int
    succeeded: int
    failed: int
    duplicates: int
    aborted: int
    def __init__(self, received: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., duplicates: _Optional[int] = ..., aborted: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "target", "operation", "state", "counts", "reason", "created_at", "accepted_at", "updated_at", "completed_at", "retry_of", "final")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    target: str
    operation: Operation
    state: JobState
    counts: Counts
    reason: str
    created_at: _timestamp_pb2.Timestamp
    accepted_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    retry_of: str
    final: bool
    def __init__(self, job_id: _Optional[str] = ..., target: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., counts: _Optional[_Union[Counts, _Mapping]] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accepted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retry_of: _Optional[str] = ..., final: _Optional[bool] = ...) -> None: ...
