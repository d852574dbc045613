"""The typed vocabulary shared by every layer: operations, record statuses and job states.

One home for these words, so that no module spells a state or a status as a bare string
of its own; StrEnum members compare equal to their values, so they go into SQL, JSON and
Kafka headers unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Operation(StrEnum):
    """What a record asks of its key's row."""

    INSERT = "insert"
    """Add the row; an existing key with other values fails with 23505."""
    UPSERT = "upsert"
    """Insert or replace the row by key."""
    DELETE = "delete"
    """Remove the row by key (the record carries key fields only)."""


class RecordStatus(StrEnum):
    """A record's outcome, as reported per record and counted per job."""

    SUCCEEDED = "succeeded"
    """Applied: the table changed (or, within one write, was changed and changed back)."""
    DUPLICATE = "duplicate"
    """Applying it would change nothing the log had not already put there."""
    FAILED = "failed"
    """Not applied: invalid, refused by PostgreSQL (SQLSTATE as code), or undeliverable."""
    ABORTED = "aborted"
    """Not applied: its job was aborted or failed before the record was written."""


class JobSource(StrEnum):
    """Where a job's records came from."""

    HTTP = "http"
    """A bulk submission; the submitter's tenant owns the job."""
    KAFKA = "kafka"
    """A producer's input topic partition; no HTTP tenant owns the job."""


class JobState(StrEnum):
    """The states of a job, in the order a job moves through them."""

    RECEIVING = "receiving"
    ACCEPTED = "accepted"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    ABORTED = "aborted"


TERMINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.COMPLETED_WITH_ERRORS, JobState.FAILED, JobState.ABORTED}
)
"""A job in one of these states never changes state again."""
HALTED_STATES = frozenset({JobState.FAILED, JobState.ABORTED})
"""Jobs whose records still arriving are recorded as aborted instead of applied."""
