"""The audit trail of producer input topics: what was forwarded, refused, and who says they sent it.

A Kafka record does not carry the principal that produced it: the broker authenticates
producers (SASL) and its ACLs decide who may write ``sluice.input.<target>``, but the
consumer never learns the name. What a record can carry is a header its producer wrote,
``sluice-principal``; it is recorded as *asserted*, never as authenticated, so that no one
reads the audit trail as proof of identity. One audit line is written per forwarded batch,
topic, operation and asserted principal, after the broker has acknowledged the envelopes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agents.apply.decode import header
from app.input_policy import OPERATION_NOT_ALLOWED
from schemas.envelope import Item

audit_log = logging.getLogger("sluice.audit")

PRINCIPAL_HEADER = "sluice-principal"
MAX_PRINCIPAL_CHARS = 128
"""A longer asserted principal is cut: a header is producer input, not a trusted name."""
MAX_PRINCIPALS_PER_STREAM = 16
"""Distinct asserted principals per topic and operation and batch; the rest are counted
together under OTHER_PRINCIPALS, so that a producer cannot flood the audit log."""
OTHER_PRINCIPALS = "(other)"
INPUT_FORWARDED = "input records forwarded"


def asserted_principal(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The ``sluice-principal`` header as printable text, or None. Client-asserted only."""
    text = header(headers, PRINCIPAL_HEADER, any_case=True)
    if text is None:
        return None
    cleaned = "".join(c if c.isprintable() else "?" for c in text).strip()
    return cleaned[:MAX_PRINCIPAL_CHARS] or None


@dataclass
class _Counts:
    records: int = 0
    refused: int = 0
    """Failed because the topic does not accept the record's operation."""
    invalid: int = 0
    """Failed for anything else found before the database: undecodable, invalid, unknown operation."""


class InputTally:
    """Counts one forwarded batch's records by topic, operation and asserted principal."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str, str | None], _Counts] = {}
        self._principals: dict[tuple[str, str], set[str | None]] = {}

    def count(self, topic: str, target: str, operation: str, principal: str | None, item: Item) -> None:
        """Add one record, as forwarded under ``operation``."""
        seen = self._principals.setdefault((topic, operation), set())
        if principal not in seen:
            if len(seen) >= MAX_PRINCIPALS_PER_STREAM:
                principal = OTHER_PRINCIPALS
            seen.add(principal)
        counts = self._counts.setdefault((topic, target, operation, principal), _Counts())
        counts.records += 1
        if item.error_code == OPERATION_NOT_ALLOWED:
            counts.refused += 1
        elif item.row is None:
            counts.invalid += 1

    def lines(self) -> list[dict[str, Any]]:
        """The audit fields, one dict per topic, operation and asserted principal."""
        return [
            {"audit": True, "topic": topic, "target": target, "operation": operation,
             "records": c.records, "refused": c.refused, "invalid": c.invalid,
             "asserted_principal": principal, "principal_authenticated": False}
            for (topic, target, operation, principal), c in sorted(
                self._counts.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3] or ""))
        ]


def write_audit(tally: InputTally) -> None:
    """Write the batch's audit lines (logger ``sluice.audit``); never record contents."""
    for fields in tally.lines():
        audit_log.info(INPUT_FORWARDED, extra=fields)
