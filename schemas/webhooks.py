"""Webhooks' pure layer: their vocabulary, what may be registered, the payload sent and
the retry schedule. No I/O here: the store, the views and the delivery runner share it."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

import orjson

MAX_URL_CHARS = 2048
URL_SCHEMES = frozenset({"http", "https"})
RETRY_JITTER = 0.25
"""A retry waits between 75 % and all of its step: spread enough that endpoints failing
together are not retried in lockstep, narrow enough that each wait is longer than the last."""


class WebhookEvent(StrEnum):
    """What a webhook endpoint can subscribe to."""

    JOB_ENDED = "job.ended"
    """A job reached a terminal state; the payload's ``data`` is its report."""


class DeliveryState(StrEnum):
    """Where one delivery (one event for one endpoint) stands."""

    PENDING = "pending"
    """Not yet answered 2xx; attempted again at ``next_attempt_at``."""
    DELIVERED = "delivered"
    """The endpoint answered 2xx once (it may have seen the delivery more than once)."""
    FAILED = "failed"
    """Given up: no 2xx within the maximum age; ``last_error`` says what the last attempt got."""


class AttemptOutcome(StrEnum):
    """How one attempt went (the metric's label)."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    """The endpoint answered, but not 2xx (a redirect is not followed: it counts here)."""
    UNREACHABLE = "unreachable"
    """No answer: name resolution, connection, TLS or the per-request timeout."""


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a webhook endpoint, or None.

    http or https, a host, no credentials (they would be stored and logged with the URL;
    use the signature instead). Unless ``allow_private``, a host that is an address
    outside the public internet, or localhost, is refused: a tenant must not make the
    workers call the service's own network (the runner checks resolved names too).
    """
    if len(url) > MAX_URL_CHARS:
        return f"the URL is longer than {MAX_URL_CHARS} characters"
    if not url.isprintable() or not url.isascii() or " " in url:
        return "the URL must be printable ASCII without spaces (percent-encode the rest)"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  # raises ValueError for a port out of range
    except ValueError:
        return "the URL cannot be parsed"
    if parts.scheme.lower() not in URL_SCHEMES:
        return "the URL must be http or https"
    if not host:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL must not carry credentials; verify the signature instead"
    if parts.fragment:
        return "the URL must not have a fragment"
    if not allow_private and not is_public_host(host):
        return "the URL's host is not a public address"
    return None


def is_public_host(host: str) -> bool:
    """False for localhost and for address literals outside the public internet; True for
    other names (their addresses are checked when resolved, before each connection)."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        return ipaddress.ip_address(name).is_global
    except ValueError:
        return True


def retry_delay_s(attempt: int, base_s: float, cap_s: float, rand: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, …): the step
    ``min(cap_s, base_s · 2^(attempt-1))``, less up to RETRY_JITTER of it (``rand`` in [0, 1))."""
    step = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    return step * (1.0 - RETRY_JITTER * rand)


def payload(delivery_id: str, event: WebhookEvent, created_at: datetime, report: bytes) -> bytes:
    """The body of a delivery, the same bytes at every attempt: its id (the receiver's
    idempotency key), the event, when it was queued, and the job report as the
    job-reports topic carries it."""
    return orjson.dumps({"id": delivery_id, "type": event, "created_at": created_at,
                         "data": orjson.Fragment(report)})
