"""Shared factories for unit tests: the built-in targets, their codec, envelopes and messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.apply.decode import RecordsMessage
from schemas.envelope import Envelope, EnvelopeCodec, Item, envelope_headers
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_targets

SAMPLED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def targets() -> dict[str, Target]:
    """The targets shipped with Sluice (sensor_readings among them)."""
    return load_targets(BUILTIN_TARGETS_DIR)


@pytest.fixture(scope="session")
def codec(targets: dict[str, Target]) -> EnvelopeCodec:
    return EnvelopeCodec(targets)


def reading_row(i: int, sensor: str = "s") -> tuple[Any, ...]:
    """A valid sensor_readings row (sensor_id, value, sampled_at), distinct per ``i``."""
    return (f"{sensor}-{i}", float(i), SAMPLED_AT + timedelta(seconds=i))


def make_envelope(job_id: str, indexes: range | list[int], *, operation: str = "insert",
                  target: str = "sensor_readings", **kwargs: Any) -> Envelope:
    """An envelope of valid readings, one per index."""
    return Envelope(job_id, target, operation, [Item(i, reading_row(i)) for i in indexes], **kwargs)


def make_message(codec: EnvelopeCodec, offset: int, envelope: Envelope) -> RecordsMessage:
    """A records-topic message as the consumer fetches it, headers included."""
    return RecordsMessage(offset, 1_700_000_000.0, codec.encode(envelope), envelope_headers(envelope))
