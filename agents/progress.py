"""Pure helpers of the progress agent: reading job snapshots and merging them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from agents.apply.batching import JOB_HEADER


def processed(progress: dict[str, Any]) -> int:
    """Records of a job with an outcome: progress only ever grows."""
    return int(progress.get("succeeded", 0) + progress.get("failed", 0)
               + progress.get("duplicates", 0) + progress.get("aborted", 0))


def merge_progress(current: dict[str, Any], snapshot: dict[str, Any]) -> dict[str, Any]:
    """Merge a job snapshot into stored progress: a smaller snapshot never replaces a larger one."""
    if current and processed(snapshot) < processed(current):
        return current
    return dict(snapshot)


def snapshot_of(headers: Iterable[tuple[str, bytes | None]] | None, value: bytes) -> Any:
    """A results message's job snapshot: from its header, else (older messages) its body."""
    for key, header in headers or ():
        if key == JOB_HEADER and header is not None:
            return orjson.loads(header)
    return orjson.loads(value).get("job")
