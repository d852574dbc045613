"""The one mapping of Sluice's problems (RFC 9457, as HTTP answers them) to gRPC status codes.

A gRPC client gets what an HTTP client would, in gRPC's terms: the status code below, a
message "<problem type>: <detail>", and in the trailing metadata the problem document
itself (``sluice-problem-bin``, JSON) and, for 409, 429 and 503, ``retry-after`` in seconds
with the rate-limit fields HTTP sends as headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import grpc
import orjson

from web.problems import PROBLEM_TYPE_BASE, Problem, ProblemSlug, ProblemType

STATUS_BY_HTTP: Final[Mapping[int, grpc.StatusCode]] = MappingProxyType({
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    # 413 and 415 say the request itself is wrong (too big, not Protobuf): sent again
    # unchanged it would fail the same way.
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
})
"""Each HTTP status a problem can carry, as a gRPC status code."""

STATUS_BY_TYPE: Final[Mapping[ProblemSlug, grpc.StatusCode]] = MappingProxyType({
    # Not the request's fault but the state it meets: the key ran another body, or the job
    # retry_of names is not (or no longer) one this submission can retry.
    ProblemType.IDEMPOTENCY_KEY_REUSED: grpc.StatusCode.FAILED_PRECONDITION,
    ProblemType.BAD_RETRY_OF: grpc.StatusCode.FAILED_PRECONDITION,
})
"""Problem types whose gRPC code is not their HTTP status's."""

PROBLEM_METADATA: Final = "sluice-problem-bin"
RETRY_AFTER_METADATA: Final = "retry-after"
_FORWARDED_HEADERS: Final = ("retry-after", "ratelimit-limit", "ratelimit-remaining",
                              "ratelimit-reset")
"""Problem headers that still mean something to a gRPC client (not WWW-Authenticate's
challenge, which is HTTP's own)."""


def status_code(problem: Problem) -> grpc.StatusCode:
    """The gRPC code a problem is answered with."""
    by_type = STATUS_BY_TYPE.get(problem.slug)
    if by_type is not None:
        return by_type
    return STATUS_BY_HTTP.get(problem.status, grpc.StatusCode.UNKNOWN)


def status_message(problem: Problem) -> str:
    """The status message: the problem type first, so that clients can branch on it."""
    return f"{problem.slug}: {problem.detail}"


def trailing_metadata(problem: Problem, instance: str) -> tuple[tuple[str, str | bytes], ...]:
    """The problem document as HTTP's body, and the retry hints of its headers."""
    document = {"type": PROBLEM_TYPE_BASE + problem.slug, "title": problem.title,
                "status": problem.status, "detail": problem.detail, "instance": instance,
                **problem.extra}
    entries: list[tuple[str, str | bytes]] = [(PROBLEM_METADATA, orjson.dumps(document))]
    entries.extend((name.lower(), value) for name, value in problem.headers.items()
                   if name.lower() in _FORWARDED_HEADERS)
    return tuple(entries)
