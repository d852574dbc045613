"""Webhooks' pure rules: what may be registered, the retry schedule, the payload."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from schemas.webhooks import WebhookEvent, payload, retry_delay_s, url_problem


@pytest.mark.parametrize("url", ["https://hooks.example.com/sluice?token=abc",
                                 "http://receiver.example:8080/x", "HTTPS://Example.COM"])
def test_public_http_urls_are_accepted(url: str) -> None:
    assert url_problem(url, allow_private=False) is None


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.com/x", "http or https"),
    ("javascript:alert(1)", "http or https"),
    ("https:///path", "no host"),
    ("https://user:pw@example.com/", "credentials"),
    ("https://user@example.com/", "credentials"),
    ("https://example.com/#frag", "fragment"),
    ("https://example.com:99999/", "cannot be parsed"),
    ("https://exa mple.com/", "printable ASCII"),
    ("https://example.com/\n", "printable ASCII"),
    ("https://example.com/" + "a" * 2048, "longer than 2048"),
    ("http://127.0.0.1:8080/", "not a public address"),
    ("http://[::1]/", "not a public address"),
    ("http://10.1.2.3/", "not a public address"),
    ("http://169.254.169.254/latest/meta-data", "not a public address"),
    ("http://localhost/", "not a public address"),
    ("http://api.localhost./", "not a public address"),
])
def test_other_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    problem = url_problem(url, allow_private=False)
    assert problem is not None and reason in problem


def test_private_destinations_are_allowed_when_configured() -> None:
    assert url_problem("http://127.0.0.1:8080/hook", allow_private=True) is None
    assert url_problem("http://u:p@127.0.0.1/", allow_private=True) is not None


def test_each_retry_waits_longer_than_the_last_until_the_cap_whatever_the_jitter() -> None:
    for attempt in range(1, 12):
        longest = retry_delay_s(attempt, 10, 3600, 0.0)
        shortest_next = retry_delay_s(attempt + 1, 10, 3600, 0.999999)
        assert longest <= shortest_next or longest == 3600
    assert retry_delay_s(1, 10, 3600, 0.0) == 10
    assert retry_delay_s(1, 10, 3600, 0.999999) == pytest.approx(7.5)
    assert retry_delay_s(40, 10, 3600, 0.0) == 3600
    assert retry_delay_s(10_000, 10, 3600, 0.5) == 3600 * 0.875


def test_the_payload_carries_the_delivery_id_the_event_and_the_report_unchanged() -> None:
    report = b'{"job_id":"j-1","state":"completed","succeeded":3}'
    created = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)
    body = payload("d-1", WebhookEvent.JOB_ENDED, created, report)
    assert orjson.loads(body) == {"id": "d-1", "type": "job.ended",
                                  "created_at": "2026-12-06T01:02:03.456789+00:00",
                                  "data": orjson.loads(report)}
    assert payload("d-1", WebhookEvent.JOB_ENDED, created, report) == body
