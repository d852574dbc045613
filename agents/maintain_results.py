"""maintain_results: the outcomes ledger's day partitions made ahead and dropped past retention."""

from __future__ import annotations

import logging

from agents.resources import resources
from app.faust_app import app
from app.settings import get_settings
from app.store import ledger

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600.0
"""Hourly: days are made two ahead, so a missed run or two costs nothing."""


@app.timer(interval=MAINTENANCE_INTERVAL_S)  # type: ignore[untyped-decorator]
async def maintain_results() -> None:
    """Make the coming days' ledger partitions; drop the days past SLUICE_RESULTS_RETENTION."""
    if not resources.ready:
        return
    async with resources.pool.acquire() as conn:
        await ledger.maintain(conn, get_settings().results_retention)
