"""RFC 9457 problem details: the one place HTTP errors are shaped."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import redis.exceptions as redis
from aiohttp import web

from app.errors import SluiceError
from web.payloads import PayloadError
from web.payloads.records import PayloadProblem

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://sluice.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
MAX_DETAIL_CHARS = 512
"""A detail longer than this is cut: the last guard against echoing a client value whole
(each echo is already cut short by ``web.echo.echo``)."""


class Refusal(enum.StrEnum):
    """Why a submission was not admitted (the problem's slug and the metric's label)."""

    UPLOADS = "too-many-uploads"
    TENANT_UPLOADS = "tenant-uploads"
    BACKPRESSURE = "backpressure"
    TENANT_BACKPRESSURE = "tenant-backpressure"


class ProblemType(enum.StrEnum):
    """Problem types (the end of the problem ``type`` URI) raised by the views and their
    guards. With ``PayloadProblem`` (a body rejected whole) and ``Refusal`` (admission
    control) they are every type the API answers: the OpenAPI document lists exactly these."""

    UNAUTHORIZED = "unauthorized"
    INSUFFICIENT_SCOPE = "insufficient-scope"
    TARGET_NOT_ALLOWED = "target-not-allowed"
    RATE_LIMITED = "rate-limited"
    SUBMISSION_EXCEEDS_BURST = "submission-exceeds-burst"
    UNKNOWN_TARGET = "unknown-target"
    UNKNOWN_OPERATION = "unknown-operation"
    MISSING_TARGET = "missing-target"
    CONFLICTING_PARAMETERS = "conflicting-parameters"
    EMPTY_PAYLOAD = "empty-payload"
    SUBMISSION_TIMEOUT = "submission-timeout"
    BROKER_UNAVAILABLE = "broker-unavailable"
    BAD_IDEMPOTENCY_KEY = "bad-idempotency-key"
    IDEMPOTENCY_UNAVAILABLE = "idempotency-unavailable"
    IDEMPOTENCY_IN_FLIGHT = "idempotency-in-flight"
    IDEMPOTENCY_KEY_REUSED = "idempotency-key-reused"
    JOB_NOT_FOUND = "job-not-found"
    JOB_NOT_RUNNING = "job-not-running"
    BAD_STATUS_FILTER = "bad-status-filter"
    BAD_PARAMETER = "bad-parameter"
    BAD_RETRY_OF = "bad-retry-of"
    """``retry_of`` names no job of the tenant, or one of another target."""
    BAD_WEBHOOK_REQUEST = "bad-webhook-request"
    """A webhook registration whose body is not a JSON object with a ``url``."""
    BAD_WEBHOOK_URL = "bad-webhook-url"
    """Not http(s), too long, with credentials, or (by default) not a public address."""
    BAD_WEBHOOK_EVENTS = "bad-webhook-events"
    """``events`` is not a non-empty list of known event types."""
    WEBHOOK_LIMIT_REACHED = "webhook-limit-reached"
    """The tenant has SLUICE_WEBHOOK_MAX_ENDPOINTS endpoints already."""
    WEBHOOK_NOT_FOUND = "webhook-not-found"
    TARGET_NOT_FOUND = "target-not-found"
    TOO_MANY_WATCHERS = "too-many-watchers"
    """The web process holds as many event streams as it may (events_max_watchers)."""
    DEPENDENCY_UNAVAILABLE = "dependency-unavailable"
    NOT_FOUND = "not-found"
    """No such resource (a path the API does not have)."""
    METHOD_NOT_ALLOWED = "method-not-allowed"
    HTTP_ERROR = "http-error"
    """Another error of the HTTP layer itself (aiohttp's own 4xx)."""
    INTERNAL_ERROR = "internal-error"


ProblemSlug = ProblemType | PayloadProblem | Refusal
"""Every problem type the API can answer."""

ALL_PROBLEM_TYPES: tuple[ProblemSlug, ...] = (*ProblemType, *PayloadProblem, *Refusal)


class Problem(SluiceError):
    """An HTTP-level failure the client can act on."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: ProblemSlug,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS] + "…"
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extra = extra


def problem_response(problem: Problem, instance: str) -> web.Response:
    """Render a Problem as application/problem+json."""
    body = {
        "type": PROBLEM_TYPE_BASE + problem.slug,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": instance,
        **problem.extra,
    }
    return web.Response(
        status=problem.status,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


_HTTP_LAYER_PROBLEMS = {404: ProblemType.NOT_FOUND, 405: ProblemType.METHOD_NOT_ALLOWED}

DEPENDENCY_DOWN = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, redis.ConnectionError, redis.TimeoutError,
)
"""Errors that mean PostgreSQL or Redis is down (not that the request is wrong): 503."""


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every error raised by a view into problem+json; nothing leaks a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # Keep headers such as Allow (405); the body's own headers are ours to set.
        kept = {k: v for k, v in e.headers.items()
                if k.lower() not in ("content-type", "content-length")}
        return problem_response(
            Problem(e.status, e.reason, e.reason, slug=_HTTP_LAYER_PROBLEMS.get(
                e.status, ProblemType.HTTP_ERROR), headers=kept), request.path
        )
    except Exception as e:
        return problem_response(as_problem(e, request.path), request.path)


def as_problem(error: Exception, instance: str) -> Problem:
    """What the client of any transport is told of an error its call raised: a Problem as
    it is, a rejected payload, a dependency down (503), anything else 500 (logged whole,
    answered without a trace). ``instance`` names the call in the logs."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, PayloadError):
        return Problem(error.status, error.title, error.detail, slug=error.problem)
    if isinstance(error, DEPENDENCY_DOWN):
        log.warning("dependency unavailable", extra={"path": instance,
                                                     "error": type(error).__name__})
        return Problem(503, "Service unavailable",
                       "a service Sluice depends on is not answering; retry later",
                       slug=ProblemType.DEPENDENCY_UNAVAILABLE, headers={"Retry-After": "5"})
    log.error("unhandled error", extra={"path": instance}, exc_info=error)
    return Problem(500, "Internal error", "the server failed; the error is logged",
                   slug=ProblemType.INTERNAL_ERROR)
