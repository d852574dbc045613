"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

A token is pasted into the page; a job submitted meanwhile (with bad records) must move
its bar to 100 % through the live event stream, the failures table must show its bad
records by code with examples, and the chart and queue figures must be drawn. Set
SLUICE_TEST_SCREENSHOT to keep a screenshot of the page at the end.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from tests.integration.conftest import Stack, bearer, token_for
from tests.integration.helpers import ndjson, reading

RECORDS = 2_000
BAD = (123, 1_700, 1_999)
WAIT_MS = 90_000


def chromium() -> str:
    """Debian's Chromium: skipped, loudly, when it is not installed; failed instead when
    SLUICE_TEST_REQUIRE_TOOLS is set (as `.ci/run` sets it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "dashboard browser test SKIPPED: chromium is not installed (apt-get install chromium)"
        if os.environ.get("SLUICE_TEST_REQUIRE_TOOLS"):
            pytest.fail(message + "; SLUICE_TEST_REQUIRE_TOOLS is set")
        pytest.skip(message)
    return found


def _sign_in(page: Page, base_url: str, token: str) -> None:
    page.goto(f"{base_url}/dashboard")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    expect(page.locator("#board")).to_be_visible()
    expect(page.locator("#status")).to_have_text("live", timeout=10_000)


def test_a_job_submitted_while_watching_reaches_100_percent_and_shows_its_failures(
    stack: Stack,
) -> None:
    executable = chromium()
    tenant = f"dashboard-{uuid.uuid4().hex[:6]}"
    token = token_for(stack.auth, subject="dashboard", tenant=tenant)
    records = [reading(tenant, i) for i in range(RECORDS)]
    for i in BAD:
        records[i] = {**records[i], "value": "not a number"}
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(f"{m.text} {m.location}")
                    if m.type == "error" else None)
            _sign_in(page, stack.base_url, token)

            accepted = requests.post(
                f"{stack.base_url}/v1/bulk-operations?target=sensor_readings",
                data=ndjson(records), timeout=60,
                headers={**bearer(token), "Content-Type": "application/x-ndjson"})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]

            row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
            expect(row).to_be_visible(timeout=WAIT_MS)
            expect(row.locator("[role=progressbar]")).to_have_attribute(
                "data-progress", "100", timeout=WAIT_MS)
            expect(row).to_have_attribute("data-state", "completed_with_errors")
            expect(row.locator("td").nth(6)).to_have_text(str(len(BAD)))

            failures = page.locator(f'#failures tr[data-job-id="{job_id}"]')
            expect(failures).to_have_count(1, timeout=WAIT_MS)
            expect(failures).to_have_attribute("data-code", "wrong_type")
            expect(failures.locator("td").nth(2)).to_have_text(str(len(BAD)))
            examples = failures.locator(".example")
            expect(examples).to_have_count(len(BAD))
            expect(examples.first).to_contain_text(f"#{BAD[0]}:")
            expect(examples.first).to_contain_text("not a number")

            # The chart counted the job's records as they were given outcomes.
            expect(page.locator("#chart polyline")).to_have_count(1)
            # The chart is redrawn every second, from the second before: wait for it.
            page.wait_for_function(
                "() => [...document.querySelector('#chart polyline').getAttribute('points')"
                ".matchAll(/,([0-9.]+)/g)].some(m => Number(m[1]) < 150)", timeout=10_000)
            expect(page.locator("#queue-records")).not_to_have_text("–")
            expect(page.locator("#tenants-title")).to_have_text("Your tenant")

            screenshot = os.environ.get("SLUICE_TEST_SCREENSHOT")
            if screenshot:
                page.wait_for_timeout(1500)
                page.screenshot(path=str(Path(screenshot)), full_page=True)
        finally:
            browser.close()
    assert not errors, errors


def test_a_refused_token_brings_back_the_sign_in_with_the_reason(stack: Stack) -> None:
    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{stack.base_url}/dashboard")
            page.fill("#token", "not-a-token")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).not_to_be_empty()
            expect(page.locator("#board")).to_be_hidden()
        finally:
            browser.close()
