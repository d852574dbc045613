"""HTTP views: thin translations between requests and the submission and job modules."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.store import jobs, ledger
from schemas.vocabulary import RecordStatus
from web.auth import SCOPE_READ, SCOPE_WRITE
from web.intake import IntakeServices, Order, job_links, take
from web.job_endings import job_endings_key, preferred_wait_s, time_left_s
from web.problems import Problem, ProblemType
from web.readiness import readiness_key
from web.results_stream import render_page, stream_results
from web.security import audit, check_target, principal_of, require_scope
from web.typedefs import pool_key, settings_key

log = logging.getLogger(__name__)

BODY_CHUNK_BYTES = 256 * 1024
IDEMPOTENCY_HEADERS = ("Idempotency-Key", "X-Idempotency-Key")


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer; orjson writes datetimes as RFC 3339."""
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _idempotency_key(request: web.Request) -> str | None:
    for header in IDEMPOTENCY_HEADERS:
        value = request.headers.get(header)
        if value is not None:
            return value
    return None


async def submit_bulk_operation(request: web.Request) -> web.Response:
    """POST /v1/bulk-operations: 202 once every record is durably in Kafka (web.intake)."""
    arrived = asyncio.get_running_loop().time()
    settings = request.app[settings_key]
    principal = principal_of(request)
    taken = await take(IntakeServices.of(request.app), principal, Order(
        request.content.iter_chunked(BODY_CHUNK_BYTES), request.headers.get("Content-Type"),
        target=request.query.get("target"), operation=request.query.get("operation"),
        content_encoding=request.headers.get("Content-Encoding"),
        idempotency_key=_idempotency_key(request), retry_of=request.query.get("retry_of"),
        method=request.method, path=request.path))
    answer = taken.answer
    if taken.replayed:
        return json_answer(answer.body, answer.status,
                           {"Location": answer.location, "Idempotent-Replayed": "true"})
    wait_s = preferred_wait_s(request.headers.get("Prefer"), settings.prefer_wait_max_s)
    left_s = 0.0 if wait_s is None else time_left_s(wait_s, arrived,
                                                    asyncio.get_running_loop().time())
    if wait_s is not None and left_s and taken.bytes_read <= settings.prefer_wait_max_body_bytes:
        ended = await request.app[job_endings_key].wait(taken.job_id, principal.tenant, left_s)
        if ended is not None:
            return json_answer(await _outcome_body(request, ended), 200,
                               {"Location": answer.location,
                                "Preference-Applied": f"wait={int(wait_s)}"})
    return json_answer(answer.body, 202, {"Location": answer.location})


async def _outcome_body(request: web.Request, job: dict[str, Any]) -> dict[str, Any]:
    """An ended job as GET shows it, with its failed result lines (at most
    prefer_wait_max_results; ``results_truncated`` says when there are more)."""
    limit = request.app[settings_key].prefer_wait_max_results
    lines: list[orjson.Fragment] = []
    if job["failed"] and limit:
        # Left early, the pages hold nothing: each is read on a connection released before it.
        async for page in ledger.iter_outcomes(request.app[pool_key], job["job_id"],
                                               RecordStatus.FAILED):
            lines.extend(orjson.Fragment(line) for line in render_page(page).splitlines())
            if len(lines) >= limit:
                break
    return {**job_body(request, job), "results": lines[:limit],
            "results_truncated": job["failed"] > min(len(lines), limit)}


def job_body(request: web.Request, job: dict[str, Any]) -> dict[str, Any]:
    """A job as GET /v1/bulk-operations/{job_id} and the job list show it."""
    return {
        "job_id": job["job_id"],
        "target": job["target"],
        "operation": job["operation"],
        "source": job["source"],
        "state": job["state"],
        "counts": {
            "received": job["records_received"],
            "succeeded": job["succeeded"],
            "failed": job["failed"],
            "duplicates": job["duplicates"],
            "aborted": job["aborted"],
        },
        "reason": job["reason"],
        "stalled_since": job.get("stalled_since"),
        "retry_of": job.get("retry_of"),
        "created_at": job["created_at"],
        "accepted_at": job["accepted_at"],
        "updated_at": job["updated_at"],
        "completed_at": job["completed_at"],
        "links": job_links(job["job_id"]),
    }


async def _existing_job(request: web.Request, tenant: str) -> dict[str, Any]:
    """The tenant's job; another tenant's job is as unknown as an id never issued."""
    job_id = request.match_info["job_id"]
    job = await jobs.get_for_tenant(request.app[pool_key], job_id, tenant)
    if job is None or job["state"] == "receiving":
        raise Problem(404, "Job not found", f"no job {job_id!r}", slug=ProblemType.JOB_NOT_FOUND)
    return job


async def get_bulk_operation(request: web.Request) -> web.Response:
    """GET /v1/bulk-operations/{job_id}: state, counts and timestamps."""
    principal = require_scope(request, SCOPE_READ)
    return json_answer(job_body(request, await _existing_job(request, principal.tenant)))


async def abort_bulk_operation(request: web.Request) -> web.Response:
    """DELETE /v1/bulk-operations/{job_id}: skip what is not written yet; keep what is."""
    principal = require_scope(request, SCOPE_WRITE)
    job = await _existing_job(request, principal.tenant)
    check_target(request, principal, job["target"], job["operation"])
    aborted = await jobs.abort(request.app[pool_key], job["job_id"], principal.tenant)
    audit("bulk operation aborted" if aborted else "bulk operation abort refused", principal,
          target=job["target"], operation=job["operation"], job_id=job["job_id"],
          records=job["records_received"])
    if aborted is None:
        raise Problem(409, "Job not running", f"the job is {job['state']}; only accepted or "
                      "processing jobs can be aborted", slug=ProblemType.JOB_NOT_RUNNING)
    return json_answer(job_body(request, aborted), 202)


async def get_bulk_operation_results(request: web.Request) -> web.StreamResponse:
    """GET /v1/bulk-operations/{job_id}/results: NDJSON outcomes in index order."""
    principal = require_scope(request, SCOPE_READ)
    status = request.query.get("status", "all")
    if status != "all" and status not in jobs.RESULT_STATUSES:
        raise Problem(400, "Bad status filter",
                      f"status must be all or one of {', '.join(jobs.RESULT_STATUSES)}",
                      slug=ProblemType.BAD_STATUS_FILTER)
    job = await _existing_job(request, principal.tenant)
    # Pages, each read on a connection released before it is written: a client that does
    # not read holds no database connection, and is dropped after the send timeout.
    pages = ledger.iter_outcomes(request.app[pool_key], job["job_id"],
                                 None if status == "all" else RecordStatus(status))
    return await stream_results(request, pages, job_id=job["job_id"],
                                send_timeout_s=request.app[settings_key].results_send_timeout_s)


def openapi_view(document: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /v1/openapi.json: the API's contract, public like any published document."""

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json",
                            headers={"Cache-Control": "public, max-age=300"})

    return serve


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up."""
    return json_answer({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: PostgreSQL, Redis and Kafka all answer (checked at most every
    SLUICE_READINESS_CACHE_S; ``Age`` says how long ago)."""
    cached = request.app[readiness_key]
    readiness = await cached.get()
    return json_answer({"status": "ready" if readiness.ready else "unavailable",
                  "checks": readiness.by_name},
                 200 if readiness.ready else 503,
                 {"Age": str(int(cached.age_s(readiness))), "Cache-Control": "no-store"})


async def prometheus_metrics(request: web.Request) -> web.Response:
    """GET /metrics on the metrics port: Prometheus text format. Runs no query: the queue
    gauges are kept current by the web process in the background, so scraping costs the
    database nothing however often it happens."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count and time every request by route."""
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    response: web.StreamResponse = await handler(request)
    metrics.http_seconds.labels(route).observe(time.perf_counter() - started)
    metrics.http_requests.labels(route, str(response.status)).inc()
    return response
