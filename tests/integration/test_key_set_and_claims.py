"""Authentication against the real web process: a key set served in pieces by a real HTTP
server, and time claims of the wrong JSON type."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.devtools.devauth import DEV_AUDIENCE, DEV_ISSUER
from app.devtools.embedded import free_port
from tests.integration.conftest import Stack, bearer, second_web_async, token_for

BULK = "/v1/bulk-operations"


def _signed(stack: Stack, **claims: object) -> str:
    """A token signed with the stack's real dev key: only the claims are odd."""
    key = serialization.load_pem_private_key(stack.auth.key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = int(time.time())
    body = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "dev", "tenant": "dev",
            "scope": "bulk:write bulk:read", "roles": ["dev"], "iat": now, "exp": now + 600}
    body.update(claims)
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": stack.auth.kid})


@pytest.mark.parametrize("claims", [{"exp": "9999999999"}, {"iat": str(int(time.time()))},
                                    {"nbf": str(int(time.time()))}, {"exp": True}], ids=repr)
async def test_a_time_claim_that_is_not_a_number_gets_401_problem(
    stack: Stack, claims: dict[str, object]
) -> None:
    async with aiohttp.ClientSession(stack.base_url) as anonymous, \
            anonymous.get(f"{BULK}/job-x", headers=bearer(_signed(stack, **claims))) as r:
        assert r.status == 401, await r.text()
        assert r.content_type == "application/problem+json"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.fixture
async def jwks_in_two_pieces(stack: Stack) -> AsyncIterator[tuple[str, list[float]]]:
    """A real HTTP server publishing the dev key set in two writes 0.3 s apart:
    (its URL, the times it was asked)."""
    body = stack.auth.jwks_file.read_bytes()
    asked: list[float] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        asked.append(time.monotonic())
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(0.3)
        await response.write(body[len(body) // 2:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/jwks.json", asked
    finally:
        await runner.cleanup()


async def test_a_key_set_fetched_in_two_pieces_verifies_tokens(
    stack: Stack, jwks_in_two_pieces: tuple[str, list[float]]
) -> None:
    """A web process reading its keys from a URL whose answer arrives in two pieces accepts
    a good token (before: the truncated key set failed to parse and every token got 401)."""
    url, asked = jwks_in_two_pieces
    port = free_port()
    log = stack.data / f"web-jwks-{port}.log"
    async with second_web_async(stack, log, http_port=str(port), auth_jwks_file=None,
                                auth_jwks_url=url, web_metrics_port="0") as web:
        async with aiohttp.ClientSession(web.base_url) as client:
            for _ in range(3):
                async with client.get(f"{BULK}/job-never-issued",
                                      headers=bearer(token_for(stack.auth))) as r:
                    assert r.status == 404, (r.status, await r.text(), log.read_text()[-2000:])
        assert len(asked) == 1  # fetched once, then cached
