"""Wakes the apply loops when a job is sealed or failed, instead of at their next look.

A job's envelopes usually reach the worker a moment before the web process seals the
job, so they wait; before, they waited for the partition's next look (SLUICE_FLUSH_INTERVAL_S),
which was most of a small job's time from POST to its end. The job store now notifies
``JOB_SETTLED_CHANNEL`` when a receiving job is sealed or failed, and this listener wakes
every partition that holds envelopes back. It is a shortcut only: a lost connection (or a
pooler that does not pass LISTEN) leaves the partitions' own timer, and the listener
reconnects with backoff.
"""

from __future__ import annotations

from collections.abc import Callable

from app.store.jobs import JOB_SETTLED_CHANNEL
from app.store.listener import ChannelListener


class SealListener(ChannelListener):
    """LISTENs on its own connection; calls ``wake`` on each notification, and on each
    (re)connection, since a seal may have come while not listening."""

    def __init__(self, dsn: str, wake: Callable[[], None]) -> None:
        super().__init__(dsn, JOB_SETTLED_CHANNEL, lambda _: wake(), on_connected=wake)
