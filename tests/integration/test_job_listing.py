"""GET /v1/bulk-operations on the real stack: a tenant's jobs, newest first, page by page."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp

from tests.integration.conftest import Stack, bearer, token_for
from tests.integration.helpers import ndjson, reading, wait_terminal


async def _page(http: aiohttp.ClientSession, headers: dict[str, str], url: str
                ) -> tuple[list[dict[str, Any]], str | None]:
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    return body["jobs"], body["links"].get("next")


async def _pages(http: aiohttp.ClientSession, headers: dict[str, str], first: str
                 ) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    url: str | None = first
    while url:
        jobs, url = await _page(http, headers, url)
        pages.append(jobs)
    return pages


async def _submit(http: aiohttp.ClientSession, headers: dict[str, str], i: int) -> str:
    body = ndjson([reading(f"listing-{uuid.uuid4().hex[:6]}", i)] + ([{"bad": 1}] if i % 2 else []))
    async with http.post("/v1/bulk-operations?target=sensor_readings", data=body,
                         headers={**headers, "Content-Type": "application/x-ndjson"}) as r:
        assert r.status == 202
        return str((await r.json())["job_id"])


async def test_a_tenants_jobs_page_newest_first_without_repeats_or_gaps(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    headers = bearer(token_for(stack.auth, tenant=f"listing-{uuid.uuid4().hex[:8]}"))
    submitted = [await _submit(http, headers, i) for i in range(5)]
    first, after = await _page(http, headers, "/v1/bulk-operations?limit=2")
    # A job submitted between two reads does not shift the pages after the first.
    newest = await _submit(http, headers, 5)
    rest = await _pages(http, headers, after) if after else []
    assert [len(page) for page in [first, *rest]] == [2, 2, 1]
    assert [job["job_id"] for page in [first, *rest] for job in page] == submitted[::-1]
    assert (await _page(http, headers, "/v1/bulk-operations?limit=1"))[0][0]["job_id"] == newest

    submitted.append(newest)
    async with aiohttp.ClientSession(stack.base_url, headers=headers) as tenant:
        for job_id in submitted:
            await wait_terminal(tenant, job_id)
    with_errors = await _pages(http, headers, "/v1/bulk-operations?state=completed_with_errors")
    # The odd ones carry a bad record.
    assert {job["job_id"] for page in with_errors for job in page} == set(submitted[1::2])
    wrong_target = await _pages(http, headers, "/v1/bulk-operations?target=nothing_here")
    assert wrong_target == [[]]


async def test_another_tenants_jobs_are_not_listed(stack: Stack, http: aiohttp.ClientSession) -> None:
    mine = bearer(token_for(stack.auth, tenant=f"listing-{uuid.uuid4().hex[:8]}"))
    theirs = bearer(token_for(stack.auth, tenant=f"listing-{uuid.uuid4().hex[:8]}"))
    async with http.post("/v1/bulk-operations?target=sensor_readings",
                         data=ndjson([reading("listing-theirs", 0)]),
                         headers={**theirs, "Content-Type": "application/x-ndjson"}) as r:
        assert r.status == 202
    assert await _pages(http, mine, "/v1/bulk-operations") == [[]]
    assert len((await _pages(http, theirs, "/v1/bulk-operations"))[0]) == 1


async def test_a_cursor_that_was_not_given_is_a_400(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/bulk-operations?cursor=bm90LWEtY3Vyc29y") as response:
        assert response.status == 400
        problem = await response.json(content_type="application/problem+json")
    assert problem["type"].endswith("/bad-parameter")


async def test_a_nul_that_postgresql_cannot_hold_names_no_job_and_is_no_500(
    http: aiohttp.ClientSession,
) -> None:
    """Found by the contract run: a NUL in an id or filter reached PostgreSQL (500)."""
    for method, url, status in (
        ("GET", "/v1/bulk-operations/a%00b", 404),
        ("GET", "/v1/bulk-operations/a%00b/results", 404),
        ("DELETE", "/v1/bulk-operations/a%00b", 404),
        ("GET", "/v1/bulk-operations?target=a%00b", 200),
        ("POST", "/v1/bulk-operations?target=sensor_readings&retry_of=a%00b", 422),
    ):
        async with http.request(method, url, data=ndjson([reading("nul", 0)]),
                                headers={"Content-Type": "application/x-ndjson"}) as response:
            assert response.status == status, (method, url, await response.text())
