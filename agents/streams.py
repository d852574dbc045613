"""Typed access to Faust's manual-acknowledgement batches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import faust


def unacked_batches(
    stream: faust.StreamT[bytes], max_events: int, within_s: float
) -> AsyncIterator[Sequence[faust.EventT[bytes]]]:
    """Batches of events that stay unacknowledged until the caller acks each one.

    Faust's ``noack_take`` yields events despite its annotation; acking them only after
    the batch's effects are durable is what keeps a crash from losing records.
    """
    batches = cast(Any, stream).noack_take(max_events, within=within_s)
    return cast(AsyncIterator[Sequence[faust.EventT[bytes]]], batches)
