"""The aiohttp application factory: routes, middlewares and resources in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from app import metrics
from app.database import create_pool, migrate
from app.kafka import all_topics, create_producer, ensure_topics
from app.settings import Settings
from app.store import jobs
from app.topics import TopicNames
from schemas.envelope import EnvelopeCodec
from schemas.targets import load_targets
from web import dashboard, event_streams, job_listing, target_discovery, views, webhooks
from web.access import PolicyError, load_policy
from web.admission import Admission, Backlog, Shares
from web.grpc.server import grpc_server
from web.idempotency import IdempotencyStore
from web.job_endings import JobEndings, job_endings_key
from web.job_events import JobEventHub, job_events_key
from web.metrics_server import metrics_app, metrics_site, refresh_queue_gauges
from web.openapi import openapi_json
from web.problems import problem_middleware
from web.ratelimit import RateLimiter
from web.readiness import CachedReadiness, readiness_key, service_probe
from web.security import OPENAPI_PATH, auth_middleware, build_guard, guard_key, security_headers
from web.submission import SubmissionContext
from web.typedefs import (
    admission_key,
    idempotency_key,
    pool_key,
    producer_key,
    redis_key,
    settings_key,
    submission_key,
    targets_key,
)

log = logging.getLogger(__name__)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    kafka, dsn, redis_url = settings.require_services()
    targets = load_targets(settings.targets_dir)
    names = TopicNames(settings.topic_prefix)
    pool = await create_pool(dsn, max_size=10)
    await migrate(pool, targets, results_retention_days=settings.results_retention)
    await ensure_topics(kafka, all_topics(names, sorted(targets)), settings.partitions)
    # Short socket timeouts: a Redis outage must turn into a quick 503, not a hung upload.
    client = redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    producer = create_producer(kafka)
    await producer.start()
    app[targets_key] = targets
    app[pool_key] = pool
    app[redis_key] = client
    app[producer_key] = producer
    app[idempotency_key] = IdempotencyStore(client, settings.idempotency_ttl_s,
                                              settings.idempotency_lease_s)
    app[guard_key].limiter = RateLimiter(client)

    async def read_backlog() -> Backlog:
        by_tenant, age = await jobs.pending_work_by_tenant(pool)
        return Backlog(sum(by_tenant.values()), age, by_tenant)

    app[admission_key] = Admission(
        shares=Shares(
            max_streams=settings.max_concurrent_uploads,
            max_tenant_streams=settings.tenant_upload_slots,
            max_queue_records=settings.max_queue_records,
            max_tenant_queue_records=settings.tenant_queue_records,
        ),
        read_backlog=read_backlog,
    )
    app[submission_key] = SubmissionContext(
        pool=pool, producer=producer, codec=EnvelopeCodec(targets), targets=targets,
        records_topic=names.records, partitions=settings.partitions,
        batch_size=settings.batch_size, spool_dir=settings.data_dir / "spool",
        stream_after_bytes=settings.stream_after_bytes,
    )
    app[readiness_key] = CachedReadiness(service_probe(pool, client, producer),
                                         ttl_s=settings.readiness_cache_s)
    app[job_endings_key] = endings = JobEndings(pool, dsn)
    endings.start()
    app[job_events_key] = events = JobEventHub(
        pool, tick_s=settings.events_tick_s, buffer=settings.events_buffer,
        receiving_window_s=settings.submission_timeout_s + jobs.SEAL_GRACE_S,
        max_watchers=settings.events_max_watchers)
    sweeper = asyncio.create_task(_sweep_stalled_jobs(pool, settings.job_stall_timeout_s))
    gauges = asyncio.create_task(refresh_queue_gauges(app[admission_key].backlog))
    log.info("web resources ready", extra={"targets": sorted(targets)})
    try:
        yield
    finally:
        for task in (sweeper, gauges):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await endings.stop()
        await events.stop()
        await producer.stop()
        await client.aclose()
        await pool.close()


SUBMISSION_SWEEP_S = 5.0


async def _sweep_stalled_jobs(pool: asyncpg.Pool, stall_s: float) -> None:
    """Make a job without progress visible (its reason, a gauge, an error line to alert on),
    from the web process too, so that it shows even when no worker is left alive. A
    stalled job is never failed: its records were accepted and will still be applied.

    Submissions past their receive deadline (their web process died) are failed here too:
    one that produced nothing has no envelope for a worker to notice it by.
    """
    while True:
        await asyncio.sleep(min(SUBMISSION_SWEEP_S, stall_s / 4))
        try:
            expired = await jobs.fail_expired_submissions(pool)
            if expired:
                log.warning("submissions failed past their deadline", extra={"jobs": expired})
            newly, marked = await jobs.flag_stalled(pool, stall_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("stalled-job sweep skipped: %s", type(e).__name__)
            continue
        metrics.stalled_jobs.set(marked)
        for job_id in newly:
            log.error("job stalled: no progress", extra={"job_id": job_id, "alert": "job_stalled",
                                                         "stall_s": stall_s})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes() -> list[tuple[str, str, Handler]]:
    """Every route of the API port: (method, path, handler). The OpenAPI document
    describes exactly these (tests/unit/web/test_openapi.py)."""
    return [
        ("POST", "/v1/bulk-operations", views.submit_bulk_operation),
        ("GET", "/v1/bulk-operations", job_listing.list_bulk_operations),
        ("GET", "/v1/bulk-operations/{job_id}", views.get_bulk_operation),
        ("DELETE", "/v1/bulk-operations/{job_id}", views.abort_bulk_operation),
        ("GET", "/v1/bulk-operations/{job_id}/results", views.get_bulk_operation_results),
        ("GET", "/v1/bulk-operations/{job_id}/events", event_streams.job_events),
        ("GET", "/v1/events", event_streams.tenant_events),
        ("GET", "/v1/overview", dashboard.get_overview),
        ("POST", "/v1/webhooks", webhooks.create_webhook),
        ("GET", "/v1/webhooks", webhooks.list_webhooks),
        ("GET", "/v1/webhooks/{webhook_id}", webhooks.get_webhook),
        ("DELETE", "/v1/webhooks/{webhook_id}", webhooks.delete_webhook),
        ("GET", "/v1/webhooks/{webhook_id}/deliveries", webhooks.list_webhook_deliveries),
        ("GET", "/v1/targets", target_discovery.list_targets),
        # Before /v1/targets/{name}, whose {name} would take "sensor_readings.proto" too.
        ("GET", "/v1/targets/{name}.proto", target_discovery.get_target_proto),
        ("GET", "/v1/targets/{name}", target_discovery.get_target),
        ("GET", OPENAPI_PATH, views.openapi_view(openapi_json())),
        ("GET", dashboard.DASHBOARD_PATH, dashboard.dashboard_page),
        *[("GET", f"{dashboard.DASHBOARD_PATH}/{name}", dashboard.asset_view(name))
          for name in dashboard.ASSETS],
        ("GET", "/healthz", views.healthz),
        ("GET", "/readyz", views.readyz),
    ]


def create_web_app(settings: Settings) -> web.Application:
    """Build the HTTP application; resources open when it starts.

    Refuses (SystemExit) when authentication, the access policy or TLS is misconfigured.
    """
    settings.require_web_security()
    assert settings.access_policy_file is not None
    try:
        access = load_policy(settings.access_policy_file)
    except PolicyError as e:
        raise SystemExit(f"sluice web cannot start: {e}") from e
    app = web.Application(
        middlewares=[views.metrics_middleware, problem_middleware, auth_middleware],
        # The body is streamed and limited by max_body_bytes ourselves.
        client_max_size=settings.max_body_bytes + 1,
    )
    app[settings_key] = settings
    app[guard_key] = build_guard(settings, access)
    app.on_response_prepare.append(security_headers(settings.tls_enabled))
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(grpc_server(settings))  # after the resources it serves with
    app.on_shutdown.append(event_streams.close_streams)
    app.cleanup_ctx.append(metrics_site(settings.http_host, settings.web_metrics_port,
                                        metrics_app(views.prometheus_metrics)))
    for method, path, handler in routes():
        app.router.add_route(method, path, handler)
    return app
