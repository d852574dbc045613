"""Verification keys from a JWKS file or URL, cached, refreshed on an unknown ``kid``.

Key rotation at the identity provider must not need a restart, so an unknown ``kid``
triggers a fetch; a forged token full of random kids must not turn Sluice into a
traffic amplifier against that provider, so such fetches are spaced by a minimum interval.
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

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[dict[str, Any]]]
"""Returns the JWKS document (``{"keys": [...]}``)."""

MAX_JWKS_BYTES = 1024 * 1024


def file_loader(path: Path) -> Loader:
    """Read the JWKS from a file (re-read on each refresh, so a rotated file is picked up)."""

    async def load() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_bytes))
        return doc

    return load


def url_loader(url: str, timeout_s: float = 5.0) -> Loader:
    """Fetch the JWKS over HTTP(S) with a short timeout and a size cap."""

    async def load() -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as r:
            r.raise_for_status()
            body = await r.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            doc: dict[str, Any] = json.loads(body)
            return doc

    return load


def parse_keys(doc: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    """Usable signing keys by kid; keys without a kid, or not for signatures, are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in doc.get("keys", []):
        if not isinstance(entry, dict) or not entry.get("kid"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys[str(entry["kid"])] = jwt.PyJWK.from_dict(entry)
        except jwt.PyJWTError as e:
            log.warning("JWKS key skipped", extra={"kid": entry.get("kid"), "error": type(e).__name__})
    return keys


class KeySet:
    """The current verification keys, with a TTL and a rate-limited refresh on a miss."""

    def __init__(self, load: Loader, *, ttl_s: float, min_refetch_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self._min_refetch_s:
                return  # someone just refreshed, or we refuse to refetch this soon
            self._fetched_at = now
            try:
                self._keys = parse_keys(await self._load())
            except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as e:
                # Keep the keys we had: an identity-provider hiccup must not lock everyone out.
                log.warning("JWKS refresh failed", extra={"error": type(e).__name__})

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key for ``kid``, refreshing when stale or unknown (at most every min_refetch_s)."""
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl_s:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            await self._refresh()
            key = self._keys.get(kid)
        return key
