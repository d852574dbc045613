"""Records-topic messages in, envelopes out: nothing that cannot be read is skipped.

A message that cannot be read becomes failed outcomes (``malformed_envelope``), or, when
not even its records can be salvaged, a row in ``sluice_undeliverable`` counted against
the job its headers name. A target this worker does not know yet is waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from app import metrics
from app.store.sink import Undeliverable
from schemas.envelope import (
    JOB_HEADER,
    MALFORMED_ENVELOPE,
    RECORDS_HEADER,
    Envelope,
    EnvelopeCodec,
    EnvelopeError,
    UnknownTargetError,
    salvage,
)

log = logging.getLogger(__name__)

Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None
"""Message headers as Kafka clients give them: pairs, or sometimes a mapping."""


def header(headers: Headers, name: str, *, any_case: bool = False) -> str | None:
    """A header's value as text, or None. ``any_case`` matches the name in any letter case
    (producers' headers, which Sluice does not write itself)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if (key.lower() if any_case else key) == name and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


@dataclass(frozen=True, slots=True)
class RecordsMessage:
    """One records-topic message as fetched, not decoded yet."""

    offset: int
    timestamp_s: float
    value: bytes
    headers: Headers = None

    @property
    def job_id(self) -> str | None:
        """The job its headers name (every envelope's message carries it)."""
        return header(self.headers, JOB_HEADER)

    @property
    def records(self) -> int:
        """How many records its headers say it holds (0 if they do not say)."""
        count = header(self.headers, RECORDS_HEADER)
        return int(count) if count and count.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One records-topic message, decoded."""

    partition: int
    offset: int
    envelope: Envelope | None
    undeliverable: Undeliverable | None = None
    """Set when not even the job's records could be read from the message."""


class EnvelopeDecoder:
    """Decodes messages; waits up to ``unknown_target_wait_s`` for a target not known yet.

    Meanwhile ``reload_targets`` re-reads the target definitions (a rolling deploy may
    have added the file); past the wait, the envelope's records fail with ``unknown_target``.
    """

    def __init__(self, codec: EnvelopeCodec, reload_targets: Callable[[], Awaitable[bool]],
                 unknown_target_wait_s: float) -> None:
        self._codec = codec
        self._reload_targets = reload_targets
        self._wait_s = unknown_target_wait_s

    def decode(self, partition: int, message: RecordsMessage) -> Delivery:
        """Decode one message; raises UnknownTargetError for a target not known (yet)."""
        offset = message.offset
        metrics.message_age.observe(max(0.0, time.time() - message.timestamp_s))
        try:
            return Delivery(partition, offset, self._codec.decode(message.value))
        except UnknownTargetError:
            raise
        except EnvelopeError as e:
            log.error("undecodable envelope at partition %d offset %d: %s", partition, offset, e)
            metrics.undeliverable.inc()
            salvaged = salvage(message.value, MALFORMED_ENVELOPE, f"the envelope could not be read: {e}")
            if salvaged is not None:
                return Delivery(partition, offset, salvaged)
            return Delivery(partition, offset, None, Undeliverable(
                partition, offset, message.job_id, message.records, str(e)))

    async def decode_resolving(self, partition: int, message: RecordsMessage) -> Delivery:
        """decode, waiting for an unknown target as the class docstring says."""
        deadline = time.monotonic() + self._wait_s
        while True:
            try:
                return self.decode(partition, message)
            except UnknownTargetError as e:
                if await self._reload_targets():
                    continue
                if time.monotonic() >= deadline:
                    log.error("no target %r after %.0f s: its records fail", e.target, self._wait_s)
                    return Delivery(partition, message.offset, e.failed)
                log.warning("envelope for unknown target %r at partition %d offset %d: waiting",
                            e.target, partition, message.offset)
                await asyncio.sleep(min(2.0, self._wait_s))
