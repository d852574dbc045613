"""record_hash_to_seen: hashes of applied records, for duplicate detection over a 24 h window.

One table entry per applied envelope, keyed "<partition>:<offset>" of that envelope's
event and holding all its record hashes: one changelog write per batch of up to 2,000
records, where a key per record would cost as much as the database write itself. The
DedupIndex is rebuilt from the table after every recovery (worker start, rebalance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import faust

from app import metrics
from app.faust_app import app
from app.settings import get_settings
from tables.dedup_index import DedupIndex

log = logging.getLogger(__name__)
settings = get_settings()
HASH_BYTES = 16


class EnvelopeKeyedTable(faust.Table[str, dict[str, Any]]):
    """A table whose key names its own partition: entries land in the changelog partition
    of the envelope they describe, also when written or expired outside stream iteration."""

    def partition_for_key(self, key: Any) -> int | None:
        return int(str(key).split(":", 1)[0])


record_hash_to_seen = EnvelopeKeyedTable(
    app,
    name="record_hash_to_seen",
    default=None,
    # Typed keys: after a recovery they come back as str, not the changelog's raw bytes.
    key_type=str,
    beacon=app.tables.beacon,
    partitions=settings.partitions,
    help="'<partition>:<offset>' of an applied envelope -> {at: epoch s, hashes: hex}.",
)
app.tables.add(record_hash_to_seen)
index = DedupIndex(settings.dedup_window_s, settings.dedup_max_entries)


def now() -> float:
    """Wall-clock seconds; applied-at times must survive a restart, so not monotonic."""
    return time.time()


def was_applied_recently(digest: bytes, at: float) -> bool:
    """True if an identical record was applied within the window."""
    return index.seen(digest, at)


def remember_applied(partition: int, offset: int, digests: Sequence[bytes], at: float) -> None:
    """Record one envelope's applied hashes in the table and the index."""
    if not digests:
        return
    record_hash_to_seen[f"{partition}:{offset}"] = {
        "at": at, "hashes": b"".join(digests).hex()
    }
    index.add(digests, at)


@record_hash_to_seen.on_recover
async def rebuild_index() -> None:
    """After recovery the table holds this worker's partitions: index exactly those."""
    entries = sorted(
        (value["at"], value["hashes"]) for value in record_hash_to_seen.values() if value
    )
    index.clear()
    for at, hashes in entries:
        raw = bytes.fromhex(hashes)
        index.add([raw[i:i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)], at)
    index.expire(now())
    log.info("dedup index rebuilt", extra={"hashes": len(index), "envelopes": len(entries)})


@app.timer(interval=60.0)  # type: ignore[untyped-decorator]
async def expire_record_hashes() -> None:
    """Drop table entries and index hashes older than the window."""
    current = now()
    horizon = current - settings.dedup_window_s
    stale = [key for key, value in list(record_hash_to_seen.items())
             if value and value["at"] <= horizon]
    for key in stale:
        del record_hash_to_seen[key]
    index.expire(current)
    metrics.dedup_hashes.set(len(index))
    oldest = index.oldest()
    metrics.dedup_window_seconds.set(current - oldest if oldest is not None else 0)
