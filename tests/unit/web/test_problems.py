"""RFC 9457 problem details: rendering, and the middleware that turns every error into one."""

from __future__ import annotations

import logging
import re
from typing import Any, NoReturn

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from app.errors import SluiceError
from web.payloads import PayloadError
from web.problems import (
    ALL_PROBLEM_TYPES,
    PROBLEM_CONTENT_TYPE,
    PROBLEM_TYPE_BASE,
    Problem,
    ProblemType,
    problem_middleware,
    problem_response,
)

PATH = "/v1/bulk-operations"


def _body(response: web.StreamResponse) -> dict[str, Any]:
    assert isinstance(response, web.Response)
    assert response.body is not None
    doc: dict[str, Any] = orjson.loads(response.body)  # type: ignore[arg-type]
    return doc


def _request(path: str = PATH) -> web.Request:
    return make_mocked_request("POST", path)


def _raising(error: BaseException) -> Any:
    async def handler(request: web.Request) -> NoReturn:
        raise error

    return handler


# --- Problem and problem_response --------------------------------------------------


def test_problem_fields() -> None:
    problem = Problem(422, "Unknown target", "no target named 'x'", slug=ProblemType.UNKNOWN_TARGET)
    assert isinstance(problem, SluiceError)
    assert (problem.status, problem.title, problem.detail, problem.slug) == (
        422, "Unknown target", "no target named 'x'", "unknown-target"
    )
    assert problem.headers == {}
    assert problem.extra == {}
    assert str(problem) == "no target named 'x'"


def test_every_problem_type_is_distinct_and_names_a_uri_segment() -> None:
    assert len({str(kind) for kind in ALL_PROBLEM_TYPES}) == len(ALL_PROBLEM_TYPES)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", kind) for kind in ALL_PROBLEM_TYPES)


def test_problem_response_renders_problem_json() -> None:
    problem = Problem(
        409, "Request in progress", "a request with this key is being processed",
        slug=ProblemType.IDEMPOTENCY_IN_FLIGHT, headers={"Retry-After": "1"}, retry_in_s=1,
        known_targets=["a", "b"],
    )
    response = problem_response(problem, "/v1/bulk-operations?target=a")
    assert response.status == 409
    assert response.content_type == PROBLEM_CONTENT_TYPE == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    assert _body(response) == {
        "type": PROBLEM_TYPE_BASE + "idempotency-in-flight",
        "title": "Request in progress",
        "status": 409,
        "detail": "a request with this key is being processed",
        "instance": "/v1/bulk-operations?target=a",
        "retry_in_s": 1,
        "known_targets": ["a", "b"],
    }
    assert PROBLEM_TYPE_BASE == "https://sluice.dev/problems/"


def test_problem_response_without_headers_sets_only_content_type() -> None:
    response = problem_response(
        Problem(404, "Job not found", "no such job", slug=ProblemType.JOB_NOT_FOUND), "/v1/x")
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert "Retry-After" not in response.headers
    assert _body(response)["type"] == "https://sluice.dev/problems/job-not-found"


def test_problem_body_is_utf8_json() -> None:
    response = problem_response(Problem(422, "Unknown target", "no target named 'température'",
                                               slug=ProblemType.UNKNOWN_TARGET),
                                "/x")
    assert _body(response)["detail"] == "no target named 'température'"


# --- problem_middleware ------------------------------------------------------------


async def test_middleware_passes_responses_through() -> None:
    expected = web.json_response({"ok": True}, status=202)

    async def handler(request: web.Request) -> web.StreamResponse:
        return expected

    assert await problem_middleware(_request(), handler) is expected


async def test_middleware_renders_problems() -> None:
    problem = Problem(503, "Broker unavailable", "nothing was accepted",
                      slug=ProblemType.BROKER_UNAVAILABLE, headers={"Retry-After": "5"})
    response = await problem_middleware(_request(), _raising(problem))
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert response.content_type == PROBLEM_CONTENT_TYPE
    body = _body(response)
    assert body["type"] == PROBLEM_TYPE_BASE + "broker-unavailable"
    assert body["instance"] == PATH


async def test_middleware_maps_payload_too_large() -> None:
    error = PayloadError(413, "the body exceeds 1048576 bytes")
    response = await problem_middleware(_request(), _raising(error))
    assert response.status == 413
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert _body(response) == {
        "type": PROBLEM_TYPE_BASE + "payload-too-large",
        "title": "Payload too large",
        "status": 413,
        "detail": "the body exceeds 1048576 bytes",
        "instance": PATH,
    }


@pytest.mark.parametrize(
    ("status", "slug", "title"),
    [
        (400, "malformed-payload", "Malformed payload"),
        (415, "unsupported-media-type", "Unsupported media type"),
        (422, "unprocessable-payload", "Unprocessable payload"),
    ],
)
async def test_middleware_maps_other_payload_errors(status: int, slug: str, title: str) -> None:
    response = await problem_middleware(_request(), _raising(PayloadError(status, "why")))
    assert response.status == status
    body = _body(response)
    assert body["type"] == PROBLEM_TYPE_BASE + slug
    assert body["title"] == title
    assert body["detail"] == "why"


async def test_middleware_payload_error_with_custom_title() -> None:
    error = PayloadError(400, "line 3", title="Bad CSV header")
    body = _body(await problem_middleware(_request(), _raising(error)))
    assert body["title"] == "Bad CSV header"
    assert body["type"] == PROBLEM_TYPE_BASE + "malformed-payload"


async def test_middleware_hides_unexpected_errors(caplog: pytest.LogCaptureFixture) -> None:
    secret = "password=hunter2 at db.internal:5432"
    with caplog.at_level(logging.ERROR, logger="web.problems"):
        response = await problem_middleware(_request(), _raising(RuntimeError(secret)))
    assert response.status == 500
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert _body(response) == {
        "type": PROBLEM_TYPE_BASE + "internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": "the server failed; the error is logged",
        "instance": PATH,
    }
    assert isinstance(response, web.Response)
    assert b"hunter2" not in (response.body or b"")
    assert b"RuntimeError" not in (response.body or b"")
    # It is logged instead, with its traceback.
    (record,) = [r for r in caplog.records if r.name == "web.problems"]
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert record.path == PATH  # type: ignore[attr-defined]


async def test_middleware_lets_redirects_through() -> None:
    with pytest.raises(web.HTTPFound):
        await problem_middleware(_request(), _raising(web.HTTPFound("/elsewhere")))


async def test_middleware_does_not_swallow_cancellation() -> None:
    import asyncio

    with pytest.raises(asyncio.CancelledError):
        await problem_middleware(_request(), _raising(asyncio.CancelledError()))


async def test_middleware_maps_http_not_found() -> None:
    response = await problem_middleware(_request("/v1/nowhere"), _raising(web.HTTPNotFound()))
    assert response.status == 404
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert _body(response) == {
        "type": PROBLEM_TYPE_BASE + "not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "instance": "/v1/nowhere",
    }


async def test_middleware_keeps_http_exception_headers_but_not_its_content_type() -> None:
    error = web.HTTPMethodNotAllowed("PUT", ["GET", "POST"])
    response = await problem_middleware(_request(), _raising(error))
    assert response.status == 405
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert response.headers.getall("Content-Type") == [PROBLEM_CONTENT_TYPE]
    assert set(response.headers["Allow"].split(",")) == {"GET", "POST"}
    body = _body(response)
    assert body["type"] == PROBLEM_TYPE_BASE + "method-not-allowed"
    assert body["status"] == 405


async def test_middleware_http_exception_detail_is_its_reason() -> None:
    error = web.HTTPBadRequest(text="internal detail from a handler")
    response = await problem_middleware(_request(), _raising(error))
    assert response.status == 400
    assert response.content_type == PROBLEM_CONTENT_TYPE
    body = _body(response)
    assert body["title"] == body["detail"] == "Bad Request"
    assert "internal detail" not in orjson.dumps(body).decode()
