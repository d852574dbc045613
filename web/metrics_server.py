"""The web process's Prometheus endpoint, on a port of its own (SLUICE_WEB_METRICS_PORT).

Kept off the API port, as the worker's is: the API port answers clients only (scrapes are
not counted as API requests, and the port can be firewalled apart), and a scrape reads
gauges the process keeps current in the background, so it never queries PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from app import metrics
from web.admission import Backlog

log = logging.getLogger(__name__)

QUEUE_GAUGES_REFRESH_S = 5.0
"""How stale the queue gauges may be: one backlog query per this interval, whoever scrapes."""


def metrics_app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    """A bare application serving GET /metrics: no auth, no API middlewares."""
    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


def metrics_site(host: str, port: int, app: web.Application) -> Callable[
        [web.Application], AbstractAsyncContextManager[None]]:
    """A cleanup context serving ``app`` on host:port while the web application runs.

    Port 0 serves nothing. A port already taken is worth a warning, not the web process:
    a second web process on one host simply has no metrics unless given its own port.
    """

    @contextlib.asynccontextmanager
    async def serve(_: web.Application) -> AsyncIterator[None]:
        if not port:
            yield
            return
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            log.info("web metrics served", extra={"host": host, "port": port})
        except OSError as e:
            log.warning("web metrics not served on port %d: %s", port, e)
        try:
            yield
        finally:
            await runner.cleanup()

    return serve


async def refresh_queue_gauges(read_backlog: Callable[[], Awaitable[Backlog]],
                               every_s: float = QUEUE_GAUGES_REFRESH_S) -> None:
    """Keep the queue gauges current from the backlog admission control reads anyway
    (``Admission.backlog``, cached there), instead of querying it on every scrape."""
    shown: set[str] = set()
    while True:
        try:
            backlog = await read_backlog()
        except Exception as e:  # noqa: BLE001 - a database hiccup must not end the refresher
            log.warning("queue gauges not refreshed: %s", type(e).__name__)
        else:
            metrics.queue_depth.set(backlog.records)
            metrics.oldest_pending_age.set(backlog.oldest_age_s)
            shown = show_tenant_depths(backlog.by_tenant, shown)
        await asyncio.sleep(every_s)


def show_tenant_depths(by_tenant: Mapping[str, int], shown: set[str]) -> set[str]:
    """Set each queued tenant's depth and drop the tenants shown before with nothing queued
    now, so that the series count follows the tenants with work, not every tenant seen."""
    for tenant, records in by_tenant.items():
        metrics.tenant_queue_depth.labels(tenant or "-").set(records)
    now = {tenant or "-" for tenant in by_tenant}
    for gone in shown - now:
        metrics.tenant_queue_depth.remove(gone)
    return now
