"""Verification keys from a JWKS file or URL, cached, refreshed on an unknown ``kid``.

Key rotation at the identity provider must not need a restart, so an unknown ``kid``
triggers a fetch; a forged token full of random kids must not turn Sluice into a
traffic amplifier against that provider, so such fetches are spaced by a minimum interval.
A failed fetch keeps the keys already loaded and is retried with bounded exponential
backoff. A remote key set comes over https only (plain http only from this host), read whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from app.settings import jwks_url_problem

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[dict[str, Any]]]
"""Returns the JWKS document (``{"keys": [...]}``)."""

MAX_JWKS_BYTES = 1024 * 1024
MAX_BACKOFF_S = 300.0
"""The longest wait between two fetches while the provider keeps failing."""
MIN_BACKOFF_S = 1.0
"""The first wait after a failure when ``min_refetch_s`` is 0: failures are never retried in a loop."""


def file_loader(path: Path) -> Loader:
    """Read the JWKS from a file (re-read on each refresh, so a rotated file is picked up)."""

    async def load() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_bytes))
        return doc

    return load


def url_loader(url: str, timeout_s: float = 5.0) -> Loader:
    """Fetch the JWKS over HTTPS (plain HTTP only on loopback) with a short timeout and a size cap.

    Raises ValueError at once for a URL that would fetch keys in clear from another host:
    whoever can alter that response could sign tokens for any tenant.
    """
    problem = jwks_url_problem(url)
    if problem is not None:
        raise ValueError(problem)

    async def load() -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        # No redirects: one could lead an https URL to plain HTTP or to another host.
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(url, allow_redirects=False) as r:
            if r.status != 200:
                raise ValueError(f"JWKS fetch answered HTTP {r.status}")
            doc: dict[str, Any] = json.loads(await read_capped(r.content, MAX_JWKS_BYTES))
            return doc

    return load


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, however many pieces it arrives in; ValueError past ``limit`` bytes.

    ``StreamReader.read(n)`` returns what is buffered, not n bytes: a key set sent in two
    TCP segments was cut in half by it, failed to parse, and every token got 401.
    """
    body = bytearray()
    async for chunk in stream.iter_any():
        body += chunk
        if len(body) > limit:
            raise ValueError("JWKS document too large")
    return bytes(body)


def parse_keys(doc: object) -> dict[str, jwt.PyJWK]:
    """Usable signing keys by kid; keys without a kid, or not for signatures, are skipped.

    ValueError when the document is no key set or holds no usable key.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('a JWKS document is an object with a "keys" list')
    keys: dict[str, jwt.PyJWK] = {}
    for entry in doc["keys"]:
        if not isinstance(entry, dict) or not entry.get("kid"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys[str(entry["kid"])] = jwt.PyJWK.from_dict(entry)
        except jwt.PyJWTError as e:
            log.warning("JWKS key skipped", extra={"kid": entry.get("kid"), "error": type(e).__name__})
    if not keys:
        # Treated as a failed fetch: a provider briefly publishing nothing must not
        # replace the keys we have and lock everyone out.
        raise ValueError("the JWKS document has no usable signing key")
    return keys


def retry_delay(failures: int, min_refetch_s: float) -> float:
    """Seconds before the next fetch after ``failures`` consecutive failed ones.

    Doubles from the minimum refetch interval up to MAX_BACKOFF_S, and is never shorter
    than that interval: a provider that is down is not hammered by every forged ``kid``.
    """
    base = max(min_refetch_s, MIN_BACKOFF_S)
    return max(min_refetch_s, min(MAX_BACKOFF_S, base * 2.0 ** max(0, failures - 1)))


class KeySet:
    """The current verification keys, with a TTL and a rate-limited refresh on a miss.

    A failed fetch keeps the keys already loaded (an identity-provider hiccup must not lock
    everyone out) and is retried with exponential backoff; a success resets it.
    """

    def __init__(self, load: Loader, *, ttl_s: float, min_refetch_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        """When the keys were last fetched successfully (None: never)."""
        self._next_fetch_at = float("-inf")
        """No fetch before this moment, whatever is asked."""
        self._failures = 0
        self._lock = asyncio.Lock()

    def _stale(self, now: float) -> bool:
        return self._loaded_at is None or now - self._loaded_at >= self._ttl_s

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if now < self._next_fetch_at:
                return  # someone just fetched, or we refuse to fetch this soon
            try:
                keys = parse_keys(await self._load())
            except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as e:
                self._failures += 1
                delay = retry_delay(self._failures, self._min_refetch_s)
                self._next_fetch_at = now + delay
                log.warning("JWKS refresh failed", extra={
                    "error": type(e).__name__, "failures": self._failures, "retry_in_s": delay,
                    "keys_kept": len(self._keys)})
                return
            self._keys, self._loaded_at, self._failures = keys, now, 0
            self._next_fetch_at = now + self._min_refetch_s

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key for ``kid``, refreshing when stale or unknown (at most every min_refetch_s,
        less often while fetches fail)."""
        if self._stale(self._clock()):
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            await self._refresh()
            key = self._keys.get(kid)
        return key
