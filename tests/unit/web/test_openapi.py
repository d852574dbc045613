"""The OpenAPI document: in step with the routes, the vocabularies and the repository's copy."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from schemas.vocabulary import JobState
from web.app import routes
from web.job_listing import decode_cursor, encode_cursor, page_size, state_filter
from web.openapi import documented_errors, openapi_document, openapi_json
from web.problems import ALL_PROBLEM_TYPES, PROBLEM_TYPE_BASE, Problem, ProblemType

REPOSITORY_COPY = Path(__file__).resolve().parents[3] / "web" / "openapi.json"
HTTP_LAYER = {ProblemType.NOT_FOUND, ProblemType.METHOD_NOT_ALLOWED, ProblemType.HTTP_ERROR,
              ProblemType.INTERNAL_ERROR}
"""Answered by the HTTP layer for what no documented operation is (a path or method the
API does not have), or for a fault: documented as the Problem type's values only."""


def test_the_repository_keeps_the_document_the_service_serves() -> None:
    assert REPOSITORY_COPY.read_bytes() == openapi_json(), \
        "web/openapi.json is stale: run `sluice openapi > web/openapi.json`"


def test_every_route_is_documented_and_nothing_else() -> None:
    documented = {(method.upper(), path) for path, item in openapi_document()["paths"].items()
                  for method in item if method != "parameters"}
    assert documented == {(method, path) for method, path, _ in routes()}


def test_every_operation_has_a_unique_id_and_its_errors_documented() -> None:
    operations = [operation for item in openapi_document()["paths"].values()
                  for method, operation in item.items() if method != "parameters"]
    ids = [operation["operationId"] for operation in operations]
    assert len(ids) == len(set(ids))
    for operation_id, statuses in documented_errors().items():
        assert operation_id in ids
        assert all(400 <= status < 600 and kinds for status, kinds in statuses.items())


def test_every_problem_type_a_view_raises_is_documented_on_some_operation() -> None:
    on_operations = {kind for statuses in documented_errors().values()
                     for kinds in statuses.values() for kind in kinds}
    assert set(ALL_PROBLEM_TYPES) - HTTP_LAYER == on_operations
    listed = openapi_document()["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert listed == [PROBLEM_TYPE_BASE + kind for kind in ALL_PROBLEM_TYPES]


def test_each_error_response_pins_its_status_and_types() -> None:
    post = openapi_document()["paths"]["/v1/bulk-operations"]["post"]
    conflict = post["responses"]["409"]["content"]["application/problem+json"]["schema"]
    assert conflict["allOf"][1]["properties"] == {
        "type": {"enum": [PROBLEM_TYPE_BASE + "idempotency-in-flight"]}, "status": {"const": 409}}
    assert "Retry-After" in post["responses"]["503"]["headers"]


def test_the_job_links_lead_from_a_submission_to_its_job_results_and_abort() -> None:
    links = openapi_document()["paths"]["/v1/bulk-operations"]["post"]["responses"]["202"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        "getBulkOperation", "getBulkOperationResults", "abortBulkOperation"}


def test_the_document_is_json_with_no_unresolved_reference() -> None:
    text = openapi_json().decode()
    schemas = orjson.loads(text)["components"]["schemas"]
    assert all(name in schemas for name in re.findall(r'"#/components/schemas/([A-Za-z]+)"', text))


# --- the job list's parameters ----------------------------------------------------------

def test_a_cursor_round_trips_to_the_microsecond() -> None:
    after = (datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC), "0b9c-job")
    assert decode_cursor(encode_cursor(after)) == after


@pytest.mark.parametrize("cursor", ["", "not base64!", "bm90aGluZw==", "MjAyNi0xMi0wNnw=",
                                    "MjAyNi0xMi0wNlQwMTowMjowM3xqb2I=",
                                    "MjAyNi0xMi0wNlQwMTowMjowMyswMDowMHxqAGI="])  # NUL in the id
def test_a_cursor_not_made_here_is_a_400(cursor: str) -> None:
    with pytest.raises(Problem) as refused:
        decode_cursor(cursor)
    assert (refused.value.status, refused.value.slug) == (400, ProblemType.BAD_PARAMETER)


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5", ""])
def test_a_page_size_out_of_range_is_a_400(limit: str) -> None:
    with pytest.raises(Problem):
        page_size(limit)


def test_page_size_and_state_defaults() -> None:
    assert (page_size(None), page_size("1"), page_size("100")) == (20, 1, 100)
    assert state_filter(None) is None and state_filter("failed") is JobState.FAILED
    with pytest.raises(Problem):
        state_filter("receiving")
