"""Both processes' /metrics pass `promtool check metrics` (Prometheus' own lint: HELP text,
counters ending in _total, base units), and between them expose every series the Grafana
dashboard in deploy/grafana/ queries."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid

import aiohttp
import pytest

from app.settings import env_var
from tests.integration.conftest import Stack
from tests.integration.helpers import ndjson, reading, submit, wait_terminal
from tests.unit.deploy.test_grafana_dashboard import dashboard_series


def find_promtool_or_skip() -> str:
    """promtool's path. Without it the lint is SKIPPED, loudly, unless
    SLUICE_TEST_REQUIRE_TOOLS is set: then the test fails, so a CI run cannot pass unlinted."""
    path = shutil.which("promtool")
    if path is None:
        message = ("promtool check SKIPPED: promtool not found on the PATH "
                   "(Debian: apt-get install --no-install-recommends prometheus)")
        if os.environ.get("SLUICE_TEST_REQUIRE_TOOLS"):
            pytest.fail(message + "; SLUICE_TEST_REQUIRE_TOOLS is set")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    """Session-scoped so that it is looked for before the stack starts, not after."""
    return find_promtool_or_skip()


def _metrics_urls(stack: Stack) -> dict[str, str]:
    return {process: f"http://127.0.0.1:{stack.env[env_var(f'{process}_metrics_port')]}/metrics"
            for process in ("web", "worker")}


async def _scrape(url: str) -> str:
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as r:
        assert r.status == 200, url
        return await r.text()


async def _scrape_when(url: str, name: str, label: str, wait_s: float = 30) -> str:
    """Scrape until a sample of ``name`` has ``label``: the worker counts a batch's outcomes
    just after publishing them, so a finished job can be seen first."""
    deadline = time.monotonic() + wait_s
    while True:
        text = await _scrape(url)
        if any(line.startswith(name + "{") and label in line for line in text.splitlines()):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} with {label} in {url} after {wait_s}s:\n{text}")
        await asyncio.sleep(0.2)


def _promtool_check_metrics(promtool: str, text: str) -> tuple[int, str]:
    """promtool's exit code and what it printed (its lint findings go to stderr)."""
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=30, check=False)
    return checked.returncode, (checked.stdout + checked.stderr).decode(errors="replace")


def _exposed_names(text: str) -> set[str]:
    """Sample names, and the names # TYPE declares: a labelled counter no event has touched
    yet (no admission refused in this run, say) has no sample but is declared."""
    return {line.split()[2] if line.startswith("# TYPE ") else line.split("{")[0].split(" ")[0]
            for line in text.splitlines() if line and not line.startswith("# HELP ")}


async def test_both_processes_pass_promtool_and_expose_the_dashboards_series(
    promtool: str, stack: Stack, http: aiohttp.ClientSession
) -> None:
    tag = f"metrics-{uuid.uuid4().hex[:8]}"
    # One invalid record, so that the labelled outcome counters have more than one child.
    invalid = {"sensor_id": tag, "value": "bad", "sampled_at": 0}
    body = ndjson([reading(tag, 1), reading(tag, 2), invalid])
    job = await wait_terminal(http, (await submit(http, body))["job_id"])
    assert job["state"] == "completed_with_errors", job

    urls = _metrics_urls(stack)
    worker = await _scrape_when(urls["worker"], "sluice_records_processed_total", 'status="failed"')
    scrapes = {"web": await _scrape(urls["web"]), "worker": worker}
    for process, text in scrapes.items():
        returncode, findings = await asyncio.to_thread(_promtool_check_metrics, promtool, text)
        assert (returncode, findings) == (0, ""), f"{process} /metrics:\n{findings}"

    missing = dashboard_series() - _exposed_names(scrapes["web"]) - _exposed_names(scrapes["worker"])
    assert not missing, f"the dashboard queries series no process exposes: {sorted(missing)}"
