"""Problems as gRPC statuses: one table, the problem type in the message and the metadata."""

from __future__ import annotations

import grpc
import orjson
import pytest

from web.grpc.status import (
    PROBLEM_METADATA,
    STATUS_BY_HTTP,
    status_code,
    status_message,
    trailing_metadata,
)
from web.payloads.records import PayloadProblem
from web.problems import Problem, ProblemType, Refusal


@pytest.mark.parametrize(("status", "slug", "code"), [
    (400, PayloadProblem.MALFORMED, grpc.StatusCode.INVALID_ARGUMENT),
    (401, ProblemType.UNAUTHORIZED, grpc.StatusCode.UNAUTHENTICATED),
    (403, ProblemType.INSUFFICIENT_SCOPE, grpc.StatusCode.PERMISSION_DENIED),
    (404, ProblemType.JOB_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
    (408, ProblemType.SUBMISSION_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
    (409, ProblemType.IDEMPOTENCY_IN_FLIGHT, grpc.StatusCode.ABORTED),
    (413, PayloadProblem.TOO_LARGE, grpc.StatusCode.INVALID_ARGUMENT),
    (422, ProblemType.UNKNOWN_TARGET, grpc.StatusCode.INVALID_ARGUMENT),
    (422, ProblemType.IDEMPOTENCY_KEY_REUSED, grpc.StatusCode.FAILED_PRECONDITION),
    (422, ProblemType.BAD_RETRY_OF, grpc.StatusCode.FAILED_PRECONDITION),
    (429, Refusal.TENANT_UPLOADS, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (500, ProblemType.INTERNAL_ERROR, grpc.StatusCode.INTERNAL),
    (503, ProblemType.BROKER_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
])
def test_each_problem_has_its_code(status: int, slug: ProblemType, code: grpc.StatusCode) -> None:
    assert status_code(Problem(status, "t", "d", slug=slug)) == code


def test_no_problem_status_of_the_api_falls_through_to_unknown() -> None:
    # The statuses the API answers with (those of the OpenAPI document's errors, and 415).
    assert {400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 500, 503} <= set(STATUS_BY_HTTP)
    assert status_code(Problem(418, "t", "d", slug=ProblemType.HTTP_ERROR)) == grpc.StatusCode.UNKNOWN


def test_message_and_metadata_carry_the_problem_and_its_retry_hints() -> None:
    problem = Problem(429, "Too many requests", "the record rate limit is exhausted",
                      slug=ProblemType.RATE_LIMITED, records=12,
                      headers={"Retry-After": "3", "RateLimit-Limit": "10",
                               "WWW-Authenticate": "Bearer"})
    assert status_message(problem) == "rate-limited: the record rate limit is exhausted"
    metadata = dict(trailing_metadata(problem, "/sluice.v1.BulkIngest/Submit"))
    assert orjson.loads(metadata.pop(PROBLEM_METADATA)) == {
        "type": "https://sluice.dev/problems/rate-limited", "title": "Too many requests",
        "status": 429, "detail": "the record rate limit is exhausted",
        "instance": "/sluice.v1.BulkIngest/Submit", "records": 12}
    assert metadata == {"retry-after": "3", "ratelimit-limit": "10"}
