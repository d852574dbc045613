"""Health, readiness and Prometheus metrics of the web process."""

from __future__ import annotations

import aiohttp

from app.settings import env_var
from tests.integration.conftest import Stack


async def test_healthz_and_readyz(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as r:
        assert r.status == 200
    async with http.get("/readyz") as r:
        assert r.status == 200
        assert (await r.json())["checks"] == {"postgresql": "ok", "redis": "ok", "kafka": "ok"}


async def test_metrics_expose_queue_depth_and_latency(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get("/healthz") as r:  # at least one request in the latency histogram
        assert r.status == 200
    # On the web process's metrics port, not the API's (tests/integration/test_ops_endpoints.py).
    port = stack.env[env_var("web_metrics_port")]
    async with aiohttp.ClientSession() as scraper, \
            scraper.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    for name in ("sluice_queue_depth_records", "sluice_oldest_pending_job_seconds",
                 "sluice_http_request_seconds_bucket"):
        assert name in text


async def test_unknown_route_is_a_problem(http: aiohttp.ClientSession) -> None:
    async with http.get("/v2/nothing") as r:
        assert r.status == 404
        assert r.content_type == "application/problem+json"
