"""deliver_webhooks: sends the webhook deliveries queued when jobs end, until each is
answered 2xx or given up.

At least once: a delivery is marked delivered only after a 2xx, and a claimed one is
leased, not locked, so a worker that dies mid-request leaves it to be claimed again
when the lease ends (by any worker; claims skip each other's rows). Every attempt of a
delivery carries the same body and ``Sluice-Webhook-Id``, freshly signed. Log lines
name the delivery, endpoint, job and host, never the secret, the URL's path or the body.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import faust
import orjson

from agents.resources import resources
from app import metrics, webhook_sender
from app.faust_app import app
from app.settings import Settings, get_settings
from app.store import webhooks
from app.store.listener import ChannelListener
from app.store.reports import JOB_ENDED_CHANNEL
from schemas.job_report import job_report
from schemas.webhooks import AttemptOutcome, DeliveryState, payload, retry_delay_s

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 30.0
"""A claimed delivery is due again this long after its request's timeout: time to record
the outcome, so that only a worker that died lets a second attempt start."""
UPKEEP_S = 5.0
"""How often the pending gauge is refreshed (and, every UPKEEP_PRUNE of those, the log pruned)."""
UPKEEP_PRUNE = 720
_DB_DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class WebhookDeliverer(faust.Service):
    """Claims due deliveries while it has free slots, attempts each in a task of its own
    (one slow endpoint holds one slot, not the others), and waits ``webhook_poll_s`` when
    none is due, or until a job ends."""

    @faust.Service.task
    async def _deliver(self) -> None:
        await resources.wait_ready()
        settings = get_settings()
        session = webhook_sender.create_session(
            concurrency=settings.webhook_concurrency,
            allow_private=settings.webhook_private_destinations)
        in_flight: set[asyncio.Task[None]] = set()
        upkeep_at, upkeeps = 0.0, 0
        # A job's end queues its deliveries and notifies JOB_ENDED_CHANNEL at the commit:
        # its first attempt is made at once; retries fall due by time, within a poll.
        ended = asyncio.Event()
        _, dsn, _ = settings.require_services()
        listener = ChannelListener(dsn, JOB_ENDED_CHANNEL, lambda _: ended.set(),
                                   on_connected=ended.set)
        listener.start()
        try:
            while not self.should_stop:
                free = settings.webhook_concurrency - len(in_flight)
                claimed: list[webhooks.Due] = []
                try:
                    if free:
                        claimed = await webhooks.claim_due(
                            resources.pool, free, settings.webhook_timeout_s + LEASE_MARGIN_S)
                    if time.monotonic() >= upkeep_at:
                        upkeep_at = time.monotonic() + UPKEEP_S
                        await _upkeep(resources.pool, settings, prune=upkeeps % UPKEEP_PRUNE == 0)
                        upkeeps += 1
                except _DB_DOWN as e:
                    if self.should_stop:  # the pool closed under a worker shutting down
                        return
                    log.warning("webhook deliveries not claimed (%s); retrying", type(e).__name__)
                for due in claimed:
                    task = asyncio.create_task(attempt(resources.pool, session, settings, due))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if len(claimed) < free or not free:
                    waking = asyncio.ensure_future(ended.wait())
                    await asyncio.wait({waking, *in_flight}, timeout=settings.webhook_poll_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waking.cancel()
                    ended.clear()
        finally:
            await listener.stop()
            # Attempts cut short are claimed again when their lease ends: at least once.
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await session.close()


async def _upkeep(pool: asyncpg.Pool, settings: Settings, *, prune: bool) -> None:
    metrics.webhook_pending.set(await webhooks.pending_count(pool))
    if prune:
        pruned = await webhooks.prune(pool, settings.webhook_log_retention_days)
        if pruned:
            log.info("webhook delivery log pruned", extra={"deliveries": pruned})


async def attempt(pool: asyncpg.Pool, session: aiohttp.ClientSession, settings: Settings,
                  due: webhooks.Due) -> None:
    """One attempt at one delivery, recorded in its log; errors of the database only
    delay it (its lease ends, it is claimed again)."""
    body = payload(due.delivery_id, due.event, due.created_at,
                   job_report(orjson.loads(due.report)))
    headers = webhook_sender.signed_headers(due.delivery_id, due.secret, body, int(time.time()))
    outcome = await webhook_sender.post(
        session, due.url, body, headers, timeout_s=settings.webhook_timeout_s,
        allow_private=settings.webhook_private_destinations)
    kind = (AttemptOutcome.DELIVERED if outcome.delivered
            else AttemptOutcome.REJECTED if outcome.status is not None
            else AttemptOutcome.UNREACHABLE)
    metrics.webhook_attempts.labels(kind).inc()
    metrics.webhook_attempt_seconds.observe(outcome.duration_s)
    fields = {"delivery_id": due.delivery_id, "endpoint_id": due.endpoint_id,
              "job_id": due.job_id, "event": due.event, "attempt": due.attempt,
              "host": urlsplit(due.url).hostname, "outcome": kind, "status": outcome.status,
              "error": outcome.error, "duration_ms": round(outcome.duration_s * 1000)}
    try:
        state = await webhooks.record_attempt(
            pool, due, outcome, max_age_s=settings.webhook_max_age_s,
            retry_in_s=retry_delay_s(due.attempt, settings.webhook_retry_base_s,
                                     settings.webhook_retry_cap_s, random.random()))
    except _DB_DOWN as e:
        log.warning("webhook attempt not recorded (%s); it will be made again",
                    type(e).__name__, extra=fields)
        return
    if state is DeliveryState.FAILED:
        metrics.webhook_given_up.inc()
        log.warning("webhook delivery given up", extra={**fields, "state": state})
    else:
        log.info("webhook attempt", extra={**fields, "state": state})


deliverer = WebhookDeliverer()
app.service(deliverer)  # type: ignore[arg-type]  # faust accepts instances too
