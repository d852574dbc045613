"""DedupIndex: the in-memory lookup of record hashes applied within the window.

Pure bookkeeping, no Faust: the changelog-backed table stores one entry per envelope
(one changelog write per batch instead of one per record), and this index answers the
per-record question "was an identical record applied recently?" with one dict lookup.
Memory is bounded: past ``max_entries`` the oldest hashes are forgotten first, which
shortens the effective window instead of growing without limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class DedupIndex:
    """Record hash -> time applied, expiring by window and bounded in size."""

    def __init__(self, window_s: float, max_entries: int) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._applied_at: dict[bytes, float] = {}
        # Batches in the order they were added, to expire and evict oldest first.
        self._batches: deque[tuple[float, list[bytes]]] = deque()

    def __len__(self) -> int:
        return len(self._applied_at)

    def seen(self, digest: bytes, now: float) -> bool:
        """True if a record with this hash was applied less than the window ago."""
        at = self._applied_at.get(digest)
        return at is not None and now - at < self.window_s

    def add(self, digests: Iterable[bytes], at: float) -> None:
        """Remember a batch of hashes applied at ``at`` (epoch seconds)."""
        batch = list(digests)
        if not batch:
            return
        applied_at = self._applied_at
        for digest in batch:
            applied_at[digest] = at
        self._batches.append((at, batch))
        self._evict_while(lambda: len(self._applied_at) > self.max_entries)

    def expire(self, now: float) -> None:
        """Forget batches older than the window."""
        horizon = now - self.window_s
        self._evict_while(lambda: bool(self._batches) and self._batches[0][0] <= horizon)

    def oldest(self) -> float | None:
        """When the oldest remembered batch was applied: the effective window's start."""
        return self._batches[0][0] if self._batches else None

    def clear(self) -> None:
        """Forget everything (before a rebuild from the table)."""
        self._applied_at.clear()
        self._batches.clear()

    def _evict_while(self, condition: object) -> None:
        applied_at = self._applied_at
        while self._batches and condition():  # type: ignore[operator]
            at, batch = self._batches.popleft()
            for digest in batch:
                # A hash applied again later belongs to that later batch now.
                if applied_at.get(digest) == at:
                    del applied_at[digest]
