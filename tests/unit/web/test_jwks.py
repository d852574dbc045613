"""The key set: cached, refreshed on an unknown kid, never more often than the minimum interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from web.jwks import KeySet, file_loader, parse_keys


def _jwk(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key, as_dict=True)
    return jwk | {"kid": kid, "alg": "ES256"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kid_refetches_but_not_more_often_than_the_minimum() -> None:
    published = [_jwk("a")]
    fetches = 0

    async def load() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        return {"keys": list(published)}

    clock = Clock()
    keys = KeySet(load, ttl_s=300, min_refetch_s=30, clock=clock)
    assert await keys.get("a") is not None
    assert fetches == 1
    published.append(_jwk("b"))  # rotated at the provider
    assert await keys.get("b") is None  # too soon after the last fetch
    for _ in range(100):
        await keys.get("forged-kid")
    assert fetches == 1
    clock.now += 31
    assert await keys.get("b") is not None
    assert fetches == 2
    clock.now += 300
    await keys.get("a")  # stale: refreshed once
    assert fetches == 3


async def test_a_failed_refresh_keeps_the_keys() -> None:
    calls = 0

    async def load() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("down")
        return {"keys": [_jwk("a")]}

    clock = Clock()
    keys = KeySet(load, ttl_s=10, min_refetch_s=0, clock=clock)
    assert await keys.get("a") is not None
    clock.now += 20
    assert await keys.get("a") is not None


async def test_file_loader_and_parse_keys(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk("a"), {"kty": "EC", "use": "enc", "kid": "x"},
                                         {"kty": "EC"}, {"kid": "broken", "kty": "nope"}]}))
    assert set(parse_keys(await file_loader(path)())) == {"a"}


async def test_url_loader_fetches_over_http() -> None:
    from aiohttp import web

    from app.devtools.embedded import free_port
    from web.jwks import url_loader

    doc = {"keys": [_jwk("u")]}

    async def serve(_: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        keys = KeySet(url_loader(f"http://127.0.0.1:{port}/jwks.json"), ttl_s=60, min_refetch_s=0)
        assert await keys.get("u") is not None
    finally:
        await runner.cleanup()
