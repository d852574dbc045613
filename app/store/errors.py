"""What a database error means for the write: one record's failure, a wait, or the batch's end.

One function decides, so that the sink and the retry loop never disagree about whether
to isolate a row, to wait for the database or to give the batch up.
"""

from __future__ import annotations

import asyncio
from enum import Enum

import asyncpg

from app.errors import SluiceError


class ErrorKind(Enum):
    """How the write path treats an error."""

    ROW = "row"
    """One row is refused (data, constraint, per-row limit): that record fails, the rest go on."""
    UNAVAILABLE = "unavailable"
    """The database cannot be reached or cannot serve now: wait and retry, losing nothing."""
    CONFLICT = "conflict"
    """The database answered but the transaction lost a race (deadlock, serialisation,
    lock or statement timeout): retried a bounded number of times."""
    PERMANENT = "permanent"
    """Retrying cannot help (a missing table or column, an internal error): the affected
    records fail with the SQLSTATE as their code."""


# 22 data exception, 23 integrity constraint violation; 54000 program_limit_exceeded is
# what an index entry too large for a btree page raises (a long key), per row.
_ROW_CLASSES = ("22", "23")
_ROW_STATES = frozenset({"54000"})
# 08 connection exception, 53 insufficient resources (too many connections, disk full,
# out of memory), 57P01-57P03 shutdown and start-up, 58 system (I/O) errors.
_UNAVAILABLE_CLASSES = ("08", "53", "58")
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03"})
# 40001 serialization_failure, 40P01 deadlock_detected, 55P03 lock_not_available,
# 57014 query_canceled (statement_timeout).
LOCK_NOT_AVAILABLE = "55P03"
_CONFLICT_STATES = frozenset({"40001", "40P01", LOCK_NOT_AVAILABLE, "57014"})


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error, if it carries one."""
    state = getattr(error, "sqlstate", None)
    return str(state) if state else None


def classify(error: BaseException) -> ErrorKind:
    """How to treat ``error`` raised by a database step of the write path."""
    if isinstance(error, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
                          asyncpg.PostgresConnectionError)):
        return ErrorKind.UNAVAILABLE
    state = sqlstate_of(error)
    if state is None:
        return ErrorKind.PERMANENT
    if state.startswith(_ROW_CLASSES) or state in _ROW_STATES:
        return ErrorKind.ROW
    if state.startswith(_UNAVAILABLE_CLASSES) or state in _UNAVAILABLE_STATES:
        return ErrorKind.UNAVAILABLE
    if state in _CONFLICT_STATES:
        return ErrorKind.CONFLICT
    return ErrorKind.PERMANENT


def is_transient(error: BaseException) -> bool:
    """True when waiting and trying again may succeed."""
    return classify(error) in (ErrorKind.UNAVAILABLE, ErrorKind.CONFLICT)


def is_lock_timeout(error: BaseException) -> bool:
    """True for a wait for a lock cut short by ``lock_timeout`` (SQLSTATE 55P03)."""
    return sqlstate_of(error) == LOCK_NOT_AVAILABLE


def row_error_message(error: BaseException) -> str:
    """The database's message without DETAIL, which may quote the record's values."""
    return str(getattr(error, "message", None) or type(error).__name__)


class WriteGaveUp(SluiceError):
    """A batch kept losing races with other transactions past its attempt bound."""

    def __init__(self, sqlstate: str | None, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempts (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate
        self.attempts = attempts
