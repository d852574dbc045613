"""record_hash_to_seen: which records were applied recently, for 24 h duplicate detection."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable

import faust
from faust.streams import _current_event

from app.faust_app import app
from app.settings import get_settings

record_hash_to_seen = app.Table(
    "record_hash_to_seen",
    default=None,
    key_type=bytes,
    value_type=float,
    partitions=get_settings().partitions,
    help="16-byte record hash -> epoch seconds when a record with that hash was applied.",
)


def was_applied_recently(digest: bytes, window_s: float, now: float) -> bool:
    """True if a record with this hash was applied less than ``window_s`` ago."""
    applied_at = record_hash_to_seen.get(digest)
    return applied_at is not None and now - applied_at < window_s


def remember_applied(event: faust.EventT, digests: Iterable[bytes], now: float) -> None:
    """Record applied hashes in the changelog partition of the envelope's own partition.

    Faust picks a table key's changelog partition from the event being processed;
    a batch holds events of several partitions, so each envelope's hashes are written
    with that envelope's event made current.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        for digest in digests:
            record_hash_to_seen[digest] = now
    finally:
        _current_event.reset(token)


def now() -> float:
    """Wall-clock seconds; applied-at times must survive a restart, so not monotonic."""
    return time.time()
