"""One webhook attempt over HTTP: a signed POST that follows no redirect, reads at most
a few bytes of the answer, and reports what happened without the URL's path or query.

The session refuses, unless configured otherwise, every resolved address outside the
public internet: a tenant's endpoint must not reach the service's own network, whatever
its name resolves to when the attempt is made.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from app.store.webhooks import Attempt
from schemas.webhook_signature import ID_HEADER, SIGNATURE_HEADER, sign
from schemas.webhooks import is_public_host

USER_AGENT = "Sluice-Webhooks/1 (+https://sluice.dev/webhooks)"
MAX_RESPONSE_BYTES = 4096
"""Read of an answer, at most; the rest is dropped with the connection (only the status counts)."""
REFUSED = "refused: the host is not a public address"


class DestinationRefused(OSError):
    """The endpoint's host resolves only to addresses outside the public internet."""


class PublicResolver(AbstractResolver):
    """The default resolver, keeping only globally routable addresses."""

    def __init__(self) -> None:
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        public = [r for r in found if ipaddress.ip_address(r["host"]).is_global]
        if not public:
            raise DestinationRefused(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._resolver.close()


def create_session(*, concurrency: int, allow_private: bool) -> aiohttp.ClientSession:
    """The runner's client: no cookies (endpoints of different tenants may share a host),
    no proxy variables, no decompression (an answer is not read anyway)."""
    connector = aiohttp.TCPConnector(
        limit=concurrency, resolver=None if allow_private else PublicResolver())
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 auto_decompress=False, trust_env=False)


def signed_headers(delivery_id: str, secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers of one attempt: its idempotency id and the signature of ``body`` at ``timestamp``."""
    return {ID_HEADER: delivery_id, SIGNATURE_HEADER: sign(secret, timestamp, body),
            "Content-Type": "application/json", "User-Agent": USER_AGENT}


def _unreachable(error: BaseException, timeout_s: float) -> str:
    """Why there was no answer, in words that never contain the URL's path or query."""
    if isinstance(error, TimeoutError):
        return f"timeout: no answer within {timeout_s:g} s"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, DestinationRefused):
            return REFUSED
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            return "tls: certificate not verified"
        if isinstance(error, aiohttp.ClientConnectorSSLError):
            return "tls: handshake failed"
        if isinstance(error, aiohttp.ClientConnectorDNSError):
            return "dns: the host name does not resolve"
        return f"connection: {error.os_error.strerror or 'failed'}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "connection: closed before an answer"
    return f"http: {type(error).__name__}"


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
               *, timeout_s: float, allow_private: bool) -> Attempt:
    """POST ``body`` to ``url`` once; delivered only on a 2xx answer."""
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    if not allow_private and not is_public_host(urlsplit(url).hostname or ""):
        # An address literal never reaches the resolver: refused here.
        return Attempt(False, None, REFUSED, 0.0)
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            await response.content.read(MAX_RESPONSE_BYTES)
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
        error = _unreachable(e, timeout_s)
    delivered = status is not None and 200 <= status < 300
    if status is not None and not delivered:
        error = f"HTTP {status}"
    return Attempt(delivered, status, error, time.perf_counter() - started)
