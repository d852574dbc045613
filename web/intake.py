"""A bulk submission as every transport takes it: HTTP's POST /v1/bulk-operations and gRPC's
BulkIngest.Submit map their inputs to an Order, call ``take``, and map what it answers or
raises (a ``web.problems.Problem``) to their own answer.

Here, once for both: the scope, the target policy, ``retry_of``, the idempotency key (same
Redis store, same fingerprint: a repeat through the other transport is the same request),
the admission slot, the record buckets and the submission itself under its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from app.settings import Settings
from app.store import jobs
from schemas.vocabulary import JobState, Operation
from web.admission import Admission
from web.auth import SCOPE_WRITE, Principal
from web.idempotency import IN_FLIGHT, Fingerprint, IdempotencyStore, StoredResponse, tenant_scoped
from web.payloads import PayloadReader, media_type_for
from web.payloads.media import BINARY_MEDIA_TYPES
from web.payloads.records import PayloadProblem
from web.problems import Problem, ProblemType
from web.security import Guard, audit, authorize_target, charge_submission, demand_scope, guard_key
from web.submission import SubmissionContext, body_chunks, known_target, submit
from web.typedefs import admission_key, idempotency_key, pool_key, settings_key, submission_key

log = logging.getLogger(__name__)

SUBMISSIONS_PATH: Final = "/v1/bulk-operations"
"""The route fingerprinted for every transport: a gRPC Submit and a POST of the same body,
target, operation and key are one request."""
MAX_KEY_LENGTH: Final = 255
_REDIS_DOWN = (redis.RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class IntakeServices:
    """What a submission needs from the running web process."""

    settings: Settings
    guard: Guard
    admission: Admission
    idempotency: IdempotencyStore
    submission: SubmissionContext
    pool: asyncpg.Pool

    @classmethod
    def of(cls, app: web.Application) -> IntakeServices:
        """The web application's, once its resources are open."""
        return cls(app[settings_key], app[guard_key], app[admission_key], app[idempotency_key],
                   app[submission_key], app[pool_key])


@dataclass(frozen=True, slots=True)
class Order:
    """One submission as its transport received it; the body still to be read."""

    chunks: AsyncIterator[bytes]
    content_type: str | None
    target: str | None = None
    operation: str | None = None
    content_encoding: str | None = None
    idempotency_key: str | None = None
    retry_of: str | None = None
    method: str = "POST"
    """The call, as the audit names it (HTTP method or gRPC)."""
    path: str = SUBMISSIONS_PATH
    """The call, as the audit names it (HTTP path or gRPC method)."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A submission whose records are all durably in Kafka: new, or replayed under its key."""

    job_id: str
    answer: StoredResponse
    """The HTTP answer (202 and its body), as stored for replays."""
    replayed: bool
    bytes_read: int
    """Decoded body bytes of a new submission (0 when replayed)."""


def job_links(job_id: str) -> dict[str, str]:
    """The links of a job in every answer that shows one."""
    base = f"{SUBMISSIONS_PATH}/{job_id}"
    return {"self": base, "results": f"{base}/results"}


def accepted_body(job_id: str, target: str, operation: str, records: int) -> dict[str, Any]:
    """The 202 answer of a sealed submission, first time or replayed from its job row."""
    return {"job_id": job_id, "state": JobState.ACCEPTED, "target": target,
            "operation": operation, "records_received": records, "links": job_links(job_id)}


def checked_key(value: str | None) -> str | None:
    """A client's idempotency key, if given: 1 to 255 characters (400 otherwise)."""
    if value is not None and not 0 < len(value) <= MAX_KEY_LENGTH:
        raise Problem(400, "Bad idempotency key",
                      f"an idempotency key is 1 to {MAX_KEY_LENGTH} characters",
                      slug=ProblemType.BAD_IDEMPOTENCY_KEY)
    return value


async def _drain_fingerprint(chunks: AsyncIterator[bytes], fingerprint: Fingerprint,
                             limit: int) -> None:
    """Hash a repeated request's body without processing it, to compare with the first."""
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > limit:
            raise Problem(413, "Payload too large", f"the body exceeds {limit} bytes",
                          slug=PayloadProblem.TOO_LARGE)
        fingerprint.update(chunk)


async def _claim(store: IdempotencyStore, key: str) -> StoredResponse | str | None:
    """Claim an idempotency key; without Redis the request is refused, never run unguarded."""
    try:
        return await store.claim(key)
    except _REDIS_DOWN as e:
        raise Problem(503, "Idempotency store unavailable",
                      "requests with an idempotency key need Redis, which is not answering; "
                      "retry later or send the request without a key",
                      slug=ProblemType.IDEMPOTENCY_UNAVAILABLE, headers={"Retry-After": "5"}) from e


async def _lease_remaining(store: IdempotencyStore, key: str) -> int:
    try:
        return await store.lease_remaining_s(key)
    except _REDIS_DOWN:
        return 1


async def _sealed_answer(
    services: IntakeServices, key: str, tenant: str
) -> StoredResponse | None:
    """The 202 of a job already sealed under this key, stored again for later replays."""
    job = await jobs.find_sealed(services.pool, tenant, IdempotencyStore.key_hash(key))
    if job is None:
        return None
    body = accepted_body(job["job_id"], job["target"], job["operation"], job["records_received"])
    answer = StoredResponse(job["request_fingerprint"] or "", 202, body, body["links"]["self"])
    try:
        await services.idempotency.complete(key, answer)
    except _REDIS_DOWN:
        log.warning("could not store an idempotent response", extra={"job_id": job["job_id"]})
    return answer


async def _release(store: IdempotencyStore, key: str) -> None:
    """Free the key of a failed request; if Redis is down it expires by itself."""
    try:
        await store.release(key)
    except _REDIS_DOWN:
        log.warning("could not release an idempotency key; it expires with its TTL")


async def _store_answer(store: IdempotencyStore, key: str, answer: StoredResponse,
                        job_id: str) -> None:
    try:
        await store.complete(key, answer)
    except _REDIS_DOWN:
        # The job is accepted; a retry with this key would get 409 until the claim expires.
        log.warning("could not store an idempotent response", extra={"job_id": job_id})


def _bad_retry_of(detail: str) -> Problem:
    return Problem(422, "Bad retry_of", detail, slug=ProblemType.BAD_RETRY_OF)


async def _retried_job(pool: asyncpg.Pool, job_id: str | None,
                       tenant: str) -> dict[str, Any] | None:
    """The job ``retry_of`` names, which must be one of the tenant's own; None if absent."""
    if job_id is None:
        return None
    job = await jobs.get_for_tenant(pool, job_id[:64], tenant)
    if job is None or job["state"] == JobState.RECEIVING:
        raise _bad_retry_of("retry_of names no job of this tenant")
    return job


async def take(services: IntakeServices, principal: Principal, order: Order) -> Taken:
    """Run one submission to the point where it is safe to answer 202 (or replay the answer
    of the submission its idempotency key already ran); a Problem otherwise."""
    settings, guard = services.settings, services.guard
    demand_scope(principal, SCOPE_WRITE, method=order.method, path=order.path)
    media_type = media_type_for(order.content_type)
    query_target, query_operation = order.target, order.operation
    if media_type in BINARY_MEDIA_TYPES and not query_target:
        raise Problem(422, "Missing target",
                      f"a {media_type} body does not name its target: give ?target=NAME",
                      slug=ProblemType.MISSING_TARGET)
    target_schema = None
    if query_target:  # refuse early, before reading the body; checked again once it is parsed
        # An unknown name is 422 first: the policy check then never repeats a client's string.
        target_schema = known_target(services.submission.targets, query_target)
        authorize_target(guard, principal, query_target,
                         query_operation if query_operation in ("insert", "upsert", "delete") else None)
    retried = await _retried_job(services.pool, order.retry_of, principal.tenant)
    key = checked_key(order.idempotency_key)
    if key is not None:
        key = tenant_scoped(principal.tenant, key)
    fingerprint = Fingerprint(
        SUBMISSIONS_PATH, query_target or "", query_operation or "", media_type.value,
        order.content_encoding or "",
        # Only when given, so that fingerprints stored before retry_of existed still match.
        *([retried["job_id"]] if retried else []),
    )
    store = services.idempotency
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
            existing = await _sealed_answer(services, key, principal.tenant)
        if isinstance(existing, StoredResponse):
            await _drain_fingerprint(order.chunks, fingerprint, settings.max_body_bytes)
            if fingerprint.hexdigest() != existing.fingerprint:
                raise Problem(422, "Idempotency key reused",
                              "this idempotency key was used with a different payload",
                              slug=ProblemType.IDEMPOTENCY_KEY_REUSED)
            return Taken(str(existing.body["job_id"]), existing, True, 0)
    try:
        async with services.admission.admit(principal.tenant) as slot:
            reader = PayloadReader(
                # Only a keyed request is ever compared with a repeat: hash only those bodies.
                body_chunks(order.chunks, fingerprint if key is not None else None),
                media_type,
                content_encoding=order.content_encoding,
                max_bytes=settings.max_body_bytes,
                max_record_bytes=settings.max_record_bytes,
                max_record_fields=settings.max_record_fields,
                target_schema=target_schema, key_only=query_operation == Operation.DELETE,
            )

            async def admit(target: str, operation: str, records: int) -> None:
                authorize_target(guard, principal, target, operation)
                if retried is not None and retried["target"] != target:
                    raise _bad_retry_of(f"job {retried['job_id']} wrote {retried['target']!r}, "
                                        "not this target")
                await charge_submission(guard, principal, records)
                slot.charge(records)  # the tenant's queue share counts them from now on

            accepted = await submit(
                services.submission, reader, query_target, query_operation,
                timeout_s=settings.submission_timeout_s,
                tenant=principal.tenant, principal=principal.subject, admit=admit,
                idempotency_key=IdempotencyStore.key_hash(key) if key is not None else None,
                fingerprint=fingerprint if key is not None else None,
                # A target named in the body is authorised before its records are read.
                authorize=lambda target, operation: authorize_target(
                    guard, principal, target, operation),
                retry_of=retried["job_id"] if retried else None,
            )
    except BaseException:
        if key is not None:
            await asyncio.shield(_release(store, key))
        raise
    audit("bulk operation accepted", principal, target=accepted.target,
          operation=accepted.operation, records=accepted.records, job_id=accepted.job_id)
    body = accepted_body(accepted.job_id, accepted.target, accepted.operation, accepted.records)
    answer = StoredResponse(fingerprint.hexdigest(), 202, body, body["links"]["self"])
    if key is not None:
        # Stored before any wait: a retry with the key replays the 202 (see the README).
        await _store_answer(store, key, answer, accepted.job_id)
    return Taken(accepted.job_id, answer, False, reader.bytes_read)
