"""RFC 9457 problem details: the one place HTTP errors are shaped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import redis.exceptions as redis
from aiohttp import web

from app.errors import SluiceError
from web.payloads import PayloadError

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://sluice.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
MAX_DETAIL_CHARS = 512
"""A detail longer than this is cut: the last guard against echoing a client value whole
(each echo is already cut short by ``web.echo.echo``)."""


class Problem(SluiceError):
    """An HTTP-level failure the client can act on."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS] + "…"
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug or title.lower().replace(" ", "-")
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
    except Problem as p:
        return problem_response(p, request.path)
    except PayloadError as e:
        return problem_response(
            Problem(e.status, e.title, e.detail, slug=e.problem), request.path
        )
    except DEPENDENCY_DOWN as e:
        log.warning("dependency unavailable", extra={"path": request.path,
                                                     "error": type(e).__name__})
        return problem_response(
            Problem(503, "Service unavailable",
                    "a service Sluice depends on is not answering; retry later",
                    slug="dependency-unavailable", headers={"Retry-After": "5"}),
            request.path,
        )
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # Keep headers such as Allow (405); the body's own headers are ours to set.
        kept = {k: v for k, v in e.headers.items()
                if k.lower() not in ("content-type", "content-length")}
        return problem_response(
            Problem(e.status, e.reason, e.reason, headers=kept), request.path
        )
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return problem_response(
            Problem(500, "Internal error", "the server failed; the error is logged"), request.path
        )
