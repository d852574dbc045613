"""classify and friends: what a database error means for the write (row, wait, retry, give up)."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions as pg
import pytest

from app.errors import SluiceError
from app.store.errors import (
    ErrorKind,
    WriteGaveUp,
    classify,
    is_transient,
    row_error_message,
    sqlstate_of,
)

SECRET = "s3cr3t-sensor-42"


def _server_error(sqlstate: str, message: str, detail: str | None = None) -> BaseException:
    """An error built as asyncpg builds one from the server's fields (M, D, C...)."""
    fields = {"C": sqlstate, "M": message, "S": "ERROR"}
    if detail is not None:
        fields["D"] = detail
    error: BaseException = pg.PostgresError.new(fields)
    return error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # one record refused: data exceptions, constraints, an index entry too large
        (pg.CheckViolationError("m"), ErrorKind.ROW),
        (pg.UniqueViolationError("m"), ErrorKind.ROW),
        (pg.NotNullViolationError("m"), ErrorKind.ROW),
        (pg.NumericValueOutOfRangeError("m"), ErrorKind.ROW),
        (pg.StringDataRightTruncationError("m"), ErrorKind.ROW),
        (pg.ProgramLimitExceededError("m"), ErrorKind.ROW),
        # the transaction lost a race or timed out
        (pg.DeadlockDetectedError("m"), ErrorKind.CONFLICT),
        (pg.SerializationError("m"), ErrorKind.CONFLICT),
        (pg.LockNotAvailableError("m"), ErrorKind.CONFLICT),
        (pg.QueryCanceledError("m"), ErrorKind.CONFLICT),
        # retrying cannot help
        (pg.UndefinedTableError("m"), ErrorKind.PERMANENT),
        (pg.UndefinedColumnError("m"), ErrorKind.PERMANENT),
        (pg.InsufficientPrivilegeError("m"), ErrorKind.PERMANENT),
        (pg.InternalServerError("m"), ErrorKind.PERMANENT),
        (ValueError("not a database error"), ErrorKind.PERMANENT),
        # the database cannot be reached or cannot serve now
        (pg.CannotConnectNowError("m"), ErrorKind.UNAVAILABLE),
        (pg.AdminShutdownError("m"), ErrorKind.UNAVAILABLE),
        (pg.CrashShutdownError("m"), ErrorKind.UNAVAILABLE),
        (pg.TooManyConnectionsError("m"), ErrorKind.UNAVAILABLE),
        (pg.DiskFullError("m"), ErrorKind.UNAVAILABLE),
        (pg.ConnectionDoesNotExistError("m"), ErrorKind.UNAVAILABLE),
        (pg.ConnectionFailureError("m"), ErrorKind.UNAVAILABLE),
        (OSError("network unreachable"), ErrorKind.UNAVAILABLE),
        (ConnectionResetError("reset by peer"), ErrorKind.UNAVAILABLE),
        (ConnectionRefusedError("refused"), ErrorKind.UNAVAILABLE),
        (TimeoutError(), ErrorKind.UNAVAILABLE),
        (asyncpg.InterfaceError("x"), ErrorKind.UNAVAILABLE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classify(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) is kind


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("22P02", ErrorKind.ROW),  # invalid_text_representation: any 22 is the row's
        ("23503", ErrorKind.ROW),  # foreign_key_violation: any 23 is the row's
        ("54000", ErrorKind.ROW),
        ("54001", ErrorKind.PERMANENT),  # statement_too_complex: only 54000 is per row
        ("08006", ErrorKind.UNAVAILABLE),
        ("53200", ErrorKind.UNAVAILABLE),  # out_of_memory
        ("58030", ErrorKind.UNAVAILABLE),  # io_error
        ("57P01", ErrorKind.UNAVAILABLE),
        ("57P03", ErrorKind.UNAVAILABLE),
        ("57014", ErrorKind.CONFLICT),
        ("55P03", ErrorKind.CONFLICT),
        ("55006", ErrorKind.PERMANENT),  # object_in_use: not every 55 is a lock wait
        ("42P01", ErrorKind.PERMANENT),
        ("XX000", ErrorKind.PERMANENT),
        ("ZZ999", ErrorKind.PERMANENT),  # a SQLSTATE asyncpg does not know
    ],
)
def test_classify_by_sqlstate_of_a_server_error(sqlstate: str, kind: ErrorKind) -> None:
    error = _server_error(sqlstate, "m")
    assert sqlstate_of(error) == sqlstate
    assert classify(error) is kind


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (pg.UniqueViolationError("m"), False),
        (pg.CheckViolationError("m"), False),
        (pg.UndefinedTableError("m"), False),
        (pg.InternalServerError("m"), False),
        (pg.DeadlockDetectedError("m"), True),
        (pg.SerializationError("m"), True),
        (pg.QueryCanceledError("m"), True),
        (pg.AdminShutdownError("m"), True),
        (pg.TooManyConnectionsError("m"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (asyncpg.InterfaceError("x"), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_transient_for_unavailable_and_conflict_only(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
    assert transient == (classify(error) in (ErrorKind.UNAVAILABLE, ErrorKind.CONFLICT))


def test_row_error_message_is_the_message_without_detail() -> None:
    error = _server_error("23505", 'duplicate key value violates unique constraint "readings_pkey"',
                          detail=f"Key (sensor_id)=({SECRET}) already exists.")
    assert SECRET in str(error)  # asyncpg's own str() carries DETAIL ...
    message = row_error_message(error)
    assert message == 'duplicate key value violates unique constraint "readings_pkey"'
    assert SECRET not in message  # ... the record's outcome does not
    assert "DETAIL" not in message


def test_row_error_message_leaves_out_a_check_violations_failing_row() -> None:
    error = _server_error("23514", 'new row for relation "readings" violates check constraint "c"',
                          detail=f"Failing row contains ({SECRET}, 1.5).")
    assert row_error_message(error) == 'new row for relation "readings" violates check constraint "c"'


def test_row_error_message_without_a_message_is_the_error_type() -> None:
    assert row_error_message(pg.UniqueViolationError(f"Key ({SECRET})")) == "UniqueViolationError"
    assert row_error_message(ConnectionResetError(SECRET)) == "ConnectionResetError"


def test_sqlstate_of() -> None:
    assert sqlstate_of(pg.UniqueViolationError("m")) == "23505"
    assert sqlstate_of(pg.ProgramLimitExceededError("m")) == "54000"
    assert sqlstate_of(pg.DeadlockDetectedError("m")) == "40P01"
    assert sqlstate_of(_server_error("57P01", "terminating connection")) == "57P01"


@pytest.mark.parametrize(
    "error", [OSError(), TimeoutError(), asyncpg.InterfaceError("x"), ValueError("v")],
    ids=lambda v: type(v).__name__,
)
def test_sqlstate_of_an_error_without_one_is_none(error: BaseException) -> None:
    assert sqlstate_of(error) is None


def test_write_gave_up_names_sqlstate_and_attempts() -> None:
    error = WriteGaveUp("40P01", 5)
    assert isinstance(error, SluiceError)
    assert (error.sqlstate, error.attempts) == ("40P01", 5)
    assert "40P01" in str(error) and "5 attempts" in str(error)
