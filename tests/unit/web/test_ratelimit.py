"""RateLimit headers of a decision (the buckets themselves are tested against real Valkey)."""

from __future__ import annotations

from web.ratelimit import Decision, rate_limit_headers


def test_refused_decision_has_retry_after_and_ratelimit_headers() -> None:
    headers = rate_limit_headers(Decision(False, 100, 0, 2.3, "records:x"))
    assert headers == {"RateLimit-Limit": "100", "RateLimit-Remaining": "0",
                       "RateLimit-Reset": "3", "Retry-After": "3"}


def test_retry_after_is_at_least_one_second() -> None:
    assert rate_limit_headers(Decision(False, 5, 0, 0.001, "r"))["Retry-After"] == "1"
    assert "Retry-After" not in rate_limit_headers(Decision(True, 5, 4, 0, "r"))
