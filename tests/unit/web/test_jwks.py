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


# --- issue 11: whole bodies, https only, back-off on failure ------------------------------------

async def _serve(handler: Any) -> tuple[Any, str]:
    """A real local HTTP server with one route, /jwks.json: (runner, its URL)."""
    from aiohttp import web

    from app.devtools.embedded import free_port

    app = web.Application()
    app.router.add_get("/jwks.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/jwks.json"


async def test_url_loader_reads_a_key_set_sent_in_two_pieces() -> None:
    """A body that arrives in two TCP writes with a pause between them is read whole."""
    import asyncio

    from aiohttp import web

    from web.jwks import url_loader

    body = json.dumps({"keys": [_jwk("a"), _jwk("b")]}).encode()

    async def serve(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(0.3)
        await response.write(body[len(body) // 2:])
        await response.write_eof()
        return response

    runner, url = await _serve(serve)
    try:
        assert set(parse_keys(await url_loader(url)())) == {"a", "b"}
    finally:
        await runner.cleanup()


async def test_url_loader_refuses_a_key_set_over_the_size_cap_sent_in_pieces() -> None:
    import pytest
    from aiohttp import web

    from web.jwks import MAX_JWKS_BYTES, url_loader

    async def serve(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(MAX_JWKS_BYTES // 65536 + 2):
            await response.write(b" " * 65536)
        await response.write_eof()
        return response

    runner, url = await _serve(serve)
    try:
        with pytest.raises(ValueError, match="too large"):
            await url_loader(url)()
    finally:
        await runner.cleanup()


async def test_url_loader_does_not_follow_a_redirect() -> None:
    """A redirect could lead an https key set to plain HTTP or another host: it is a failure."""
    import pytest
    from aiohttp import web

    from web.jwks import url_loader

    async def serve(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://example.invalid/jwks.json")

    runner, url = await _serve(serve)
    try:
        with pytest.raises(ValueError, match="302"):
            await url_loader(url)()
    finally:
        await runner.cleanup()


def test_remote_key_sets_must_use_https() -> None:
    import pytest

    from app.settings import jwks_url_problem
    from web.jwks import url_loader

    for url in ("http://idp.example/jwks.json", "ftp://idp.example/jwks.json",
                "file:///etc/jwks.json", "http://10.0.0.1/jwks.json", "idp.example/jwks.json",
                "https:///jwks.json"):
        assert jwks_url_problem(url) is not None, url
        with pytest.raises(ValueError, match="https"):
            url_loader(url)
    for url in ("https://idp.example/.well-known/jwks.json", "http://127.0.0.1:8000/jwks.json",
                "http://localhost/jwks.json", "http://[::1]:9/jwks.json", "http://127.0.0.2/j"):
        assert jwks_url_problem(url) is None, url
        url_loader(url)


def test_the_web_refuses_to_start_with_a_plain_http_remote_key_set(tmp_path: Path) -> None:
    import pytest

    from app.settings import Settings

    settings = Settings(auth_jwks_url="http://idp.example/jwks.json", auth_issuer="i",
                        auth_audience="a", access_policy_file=tmp_path / "p.toml")
    with pytest.raises(SystemExit, match="SLUICE_AUTH_JWKS_URL must be https"):
        settings.require_web_security()


async def test_failed_fetches_back_off_exponentially_and_keep_the_keys() -> None:
    """An unreachable provider is asked again after min_refetch_s, then twice, four times as
    long..., up to a bound; the keys loaded before keep verifying tokens meanwhile."""
    from web.jwks import MAX_BACKOFF_S

    clock = Clock()
    attempts: list[float] = []
    failing = False

    async def load() -> dict[str, Any]:
        attempts.append(clock.now)
        if failing:
            raise OSError("down")
        return {"keys": [_jwk("a")]}

    keys = KeySet(load, ttl_s=300, min_refetch_s=30, clock=clock)
    assert await keys.get("a") is not None
    failing = True
    start = clock.now
    # Poll with unknown kids every second for an hour: each poll would like a fetch.
    for _ in range(3600):
        clock.now += 1
        assert await keys.get("a") is not None  # the old key still verifies
        await keys.get("forged")
    gaps = [round(b - a) for a, b in zip(attempts[1:], attempts[2:], strict=False)]
    assert attempts[1] - start == 30  # the first retry: one minimum interval after the last fetch
    assert gaps[:5] == [30, 60, 120, 240, 300]  # doubling...
    assert set(gaps[5:]) == {MAX_BACKOFF_S}  # ...up to the bound
    assert all(g >= 30 for g in gaps)  # never more often than the minimum interval
    failing = False
    clock.now += MAX_BACKOFF_S
    await keys.get("forged")  # the provider is back: one fetch, and the backoff is over
    fetched = len(attempts)
    clock.now += 30
    await keys.get("forged")
    assert len(attempts) == fetched + 1  # spaced by min_refetch_s again, not by the backoff


async def test_a_key_set_that_never_loaded_is_retried_with_backoff() -> None:
    clock = Clock()
    attempts: list[float] = []

    async def load() -> dict[str, Any]:
        attempts.append(clock.now)
        raise ValueError("truncated JSON")

    keys = KeySet(load, ttl_s=300, min_refetch_s=5, clock=clock)
    for _ in range(100):
        assert await keys.get("a") is None
        clock.now += 1
    assert [round(t - attempts[0]) for t in attempts] == [0, 5, 15, 35, 75]


async def test_concurrent_misses_share_one_fetch() -> None:
    import asyncio

    fetches = 0

    async def load() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.05)
        return {"keys": [_jwk("a")]}

    keys = KeySet(load, ttl_s=300, min_refetch_s=30, clock=Clock())
    found = await asyncio.gather(*(keys.get("a") for _ in range(50)))
    assert all(k is not None for k in found) and fetches == 1
