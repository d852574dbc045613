"""HTTP views: thin translations between requests and the submission and job modules."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.store import jobs, ledger
from schemas.vocabulary import JobState, Operation, RecordStatus
from web.auth import SCOPE_READ, SCOPE_WRITE
from web.idempotency import IN_FLIGHT, Fingerprint, IdempotencyStore, StoredResponse, tenant_scoped
from web.job_endings import job_endings_key, preferred_wait_s, time_left_s
from web.payloads import PayloadReader, media_type_for
from web.payloads.media import BINARY_MEDIA_TYPES
from web.payloads.records import PayloadProblem
from web.problems import Problem, ProblemType
from web.readiness import readiness_key
from web.results_stream import render_page, stream_results
from web.security import audit, charge_records, check_target, require_scope
from web.submission import body_chunks, known_target, submit
from web.typedefs import (
    admission_key,
    idempotency_key,
    pool_key,
    settings_key,
    submission_key,
)

log = logging.getLogger(__name__)

BODY_CHUNK_BYTES = 256 * 1024
IDEMPOTENCY_HEADERS = ("Idempotency-Key", "X-Idempotency-Key")


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer; orjson writes datetimes as RFC 3339."""
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _job_links(request: web.Request, job_id: str) -> dict[str, str]:
    base = f"/v1/bulk-operations/{job_id}"
    return {"self": base, "results": f"{base}/results"}


def _idempotency_key(request: web.Request) -> str | None:
    for header in IDEMPOTENCY_HEADERS:
        value = request.headers.get(header)
        if value is not None:
            if not 0 < len(value) <= 255:
                raise Problem(400, "Bad idempotency key",
                              "an idempotency key is 1 to 255 characters",
                              slug=ProblemType.BAD_IDEMPOTENCY_KEY)
            return value
    return None


async def _drain_fingerprint(request: web.Request, fingerprint: Fingerprint, limit: int) -> None:
    """Hash a repeated request's body without processing it, to compare with the first."""
    seen = 0
    async for chunk in request.content.iter_chunked(BODY_CHUNK_BYTES):
        seen += len(chunk)
        if seen > limit:
            raise Problem(413, "Payload too large", f"the body exceeds {limit} bytes",
                          slug=PayloadProblem.TOO_LARGE)
        fingerprint.update(chunk)


_REDIS_DOWN = (redis.RedisError, OSError, TimeoutError)


async def _claim(store: IdempotencyStore, key: str) -> StoredResponse | str | None:
    """Claim an idempotency key; without Redis the request is refused, never run unguarded."""
    try:
        return await store.claim(key)
    except _REDIS_DOWN as e:
        raise Problem(503, "Idempotency store unavailable",
                      "requests with an idempotency key need Redis, which is not answering; "
                      "retry later or send the request without a key",
                      slug=ProblemType.IDEMPOTENCY_UNAVAILABLE, headers={"Retry-After": "5"}) from e


def _accepted_body(request: web.Request, job_id: str, target: str, operation: str,
                   records: int) -> dict[str, Any]:
    """The 202 answer of a sealed submission, first time or replayed from its job row."""
    return {"job_id": job_id, "state": JobState.ACCEPTED, "target": target,
            "operation": operation, "records_received": records,
            "links": _job_links(request, job_id)}


async def _lease_remaining(store: IdempotencyStore, key: str) -> int:
    try:
        return await store.lease_remaining_s(key)
    except _REDIS_DOWN:
        return 1


async def _sealed_answer(
    request: web.Request, store: IdempotencyStore, key: str, tenant: str
) -> StoredResponse | None:
    """The 202 of a job already sealed under this key, stored again for later replays."""
    job = await jobs.find_sealed(request.app[pool_key], tenant, IdempotencyStore.key_hash(key))
    if job is None:
        return None
    body = _accepted_body(request, job["job_id"], job["target"], job["operation"],
                          job["records_received"])
    answer = StoredResponse(job["request_fingerprint"] or "", 202, body, body["links"]["self"])
    try:
        await store.complete(key, answer)
    except _REDIS_DOWN:
        log.warning("could not store an idempotent response", extra={"job_id": job["job_id"]})
    return answer


async def _release(store: IdempotencyStore, key: str) -> None:
    """Free the key of a failed request; if Redis is down it expires by itself."""
    try:
        await store.release(key)
    except _REDIS_DOWN:
        log.warning("could not release an idempotency key; it expires with its TTL")


def _bad_retry_of(detail: str) -> Problem:
    return Problem(422, "Bad retry_of", detail, slug=ProblemType.BAD_RETRY_OF)


async def _retried_job(request: web.Request, tenant: str) -> dict[str, Any] | None:
    """The job ``?retry_of=`` names, which must be one of the tenant's own; None if absent."""
    job_id = request.query.get("retry_of")
    if job_id is None:
        return None
    job = await jobs.get_for_tenant(request.app[pool_key], job_id[:64], tenant)
    if job is None or job["state"] == JobState.RECEIVING:
        raise _bad_retry_of("retry_of names no job of this tenant")
    return job


async def submit_bulk_operation(request: web.Request) -> web.Response:
    """POST /v1/bulk-operations: 202 once every record is durably in Kafka."""
    arrived = asyncio.get_running_loop().time()
    settings = request.app[settings_key]
    principal = require_scope(request, SCOPE_WRITE)
    media_type = media_type_for(request.headers.get("Content-Type"))
    query_target = request.query.get("target")
    query_operation = request.query.get("operation")
    if media_type in BINARY_MEDIA_TYPES and not query_target:
        raise Problem(422, "Missing target",
                      f"a {media_type} body does not name its target: give ?target=NAME",
                      slug=ProblemType.MISSING_TARGET)
    target_schema = None
    if query_target:  # refuse early, before reading the body; checked again once it is parsed
        # An unknown name is 422 first: the policy check then never repeats a client's string.
        target_schema = known_target(request.app[submission_key].targets, query_target)
        check_target(request, principal, query_target,
                     query_operation if query_operation in ("insert", "upsert", "delete") else None)
    retried = await _retried_job(request, principal.tenant)
    key = _idempotency_key(request)
    if key is not None:
        key = tenant_scoped(principal.tenant, key)
    fingerprint = Fingerprint(
        request.path, query_target or "", query_operation or "", media_type.value,
        request.headers.get("Content-Encoding", ""),
        # Only when given, so that fingerprints stored before retry_of existed still match.
        *([retried["job_id"]] if retried else []),
    )
    store = request.app[idempotency_key]
    if key is not None:
        existing = await _claim(store, key)
        if existing == IN_FLIGHT:
            retry_after = await _lease_remaining(store, key)
            raise Problem(409, "Request in progress",
                          "a request with this idempotency key is still being processed",
                          slug=ProblemType.IDEMPOTENCY_IN_FLIGHT, headers={"Retry-After": str(retry_after)})
        if existing is None:
            # A fresh claim. A job sealed under this key whose answer was never stored (its
            # web process died between sealing and answering) is replayed, not run again.
            existing = await _sealed_answer(request, store, key, principal.tenant)
        if isinstance(existing, StoredResponse):
            await _drain_fingerprint(request, fingerprint, settings.max_body_bytes)
            if fingerprint.hexdigest() != existing.fingerprint:
                raise Problem(422, "Idempotency key reused",
                              "this idempotency key was used with a different payload",
                              slug=ProblemType.IDEMPOTENCY_KEY_REUSED)
            return json_answer(existing.body, existing.status,
                         {"Location": existing.location, "Idempotent-Replayed": "true"})
    try:
        async with request.app[admission_key].admit(principal.tenant) as slot:
            reader = PayloadReader(
                # Only a keyed request is ever compared with a repeat: hash only those bodies.
                body_chunks(request.content.iter_chunked(BODY_CHUNK_BYTES),
                            fingerprint if key is not None else None),
                media_type,
                content_encoding=request.headers.get("Content-Encoding"),
                max_bytes=settings.max_body_bytes,
                max_record_bytes=settings.max_record_bytes,
                max_record_fields=settings.max_record_fields,
                target_schema=target_schema, key_only=query_operation == Operation.DELETE,
            )
            async def admit(target: str, operation: str, records: int) -> None:
                check_target(request, principal, target, operation)
                if retried is not None and retried["target"] != target:
                    raise _bad_retry_of(f"job {retried['job_id']} wrote {retried['target']!r}, "
                                        "not this target")
                await charge_records(request, principal, records)
                slot.charge(records)  # the tenant's queue share counts them from now on

            accepted = await submit(
                request.app[submission_key], reader, query_target, query_operation,
                timeout_s=settings.submission_timeout_s,
                tenant=principal.tenant, principal=principal.subject, admit=admit,
                idempotency_key=IdempotencyStore.key_hash(key) if key is not None else None,
                fingerprint=fingerprint if key is not None else None,
                # A target named in the body is authorised before its records are read.
                authorize=lambda target, operation: check_target(
                    request, principal, target, operation),
                retry_of=retried["job_id"] if retried else None,
            )
    except BaseException:
        if key is not None:
            await asyncio.shield(_release(store, key))
        raise
    audit("bulk operation accepted", principal, target=accepted.target,
          operation=accepted.operation, records=accepted.records, job_id=accepted.job_id)
    body = _accepted_body(request, accepted.job_id, accepted.target, accepted.operation,
                          accepted.records)
    links = body["links"]
    if key is not None:
        # Stored before any wait: a retry with the key replays the 202 (see the README).
        await _store_answer(store, key, StoredResponse(fingerprint.hexdigest(), 202, body,
                                                       links["self"]), accepted.job_id)
    wait_s = preferred_wait_s(request.headers.get("Prefer"), settings.prefer_wait_max_s)
    left_s = None if wait_s is None else time_left_s(wait_s, arrived,
                                                     asyncio.get_running_loop().time())
    if left_s and reader.bytes_read <= settings.prefer_wait_max_body_bytes:
        ended = await request.app[job_endings_key].wait(accepted.job_id, principal.tenant, left_s)
        if ended is not None:
            return json_answer(await _outcome_body(request, ended), 200,
                               {"Location": links["self"],
                                "Preference-Applied": f"wait={int(wait_s)}"})
    return json_answer(body, 202, {"Location": links["self"]})


async def _store_answer(store: IdempotencyStore, key: str, answer: StoredResponse,
                        job_id: str) -> None:
    try:
        await store.complete(key, answer)
    except _REDIS_DOWN:
        # The job is accepted; a retry with this key would get 409 until the claim expires.
        log.warning("could not store an idempotent response", extra={"job_id": job_id})


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
        "links": _job_links(request, job["job_id"]),
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
