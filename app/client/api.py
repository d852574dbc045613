"""A client of Sluice's HTTP API for the `sluice submit | jobs | results | watch` commands.

Its settings are the client's own (``ClientSettings``: where the API is, which token),
read from the environment like the service's, so that `SLUICE_URL` and `SLUICE_TOKEN`
set once serve every command. A problem answer becomes ``ApiError`` with its details.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import SluiceError
from app.settings import ENV_PREFIX


class ClientSettings(BaseSettings):
    """Where the client finds the API, and as whom it calls it."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    url: str = "http://127.0.0.1:8080"
    """The API's base URL (`SLUICE_URL`)."""
    token: str | None = None
    """A bearer token (`SLUICE_TOKEN`; `sluice run` prints one, `sluice token` mints more)."""
    ca_file: Path | None = None
    """A CA bundle to verify the API's certificate with (`SLUICE_CA_FILE`)."""


class ApiError(SluiceError):
    """The API refused a request: its problem details, or the status alone."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        title = problem.get("title", f"HTTP {status}")
        detail = problem.get("detail")
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))


async def _raise_for_problem(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    text = await response.text(errors="replace")
    try:
        problem = orjson.loads(text)
    except orjson.JSONDecodeError:
        problem = {"detail": text[:300]}
    raise ApiError(response.status, problem if isinstance(problem, dict) else {})


class SluiceClient:
    """One session with the API; use as ``async with SluiceClient(settings) as client``."""

    def __init__(self, settings: ClientSettings) -> None:
        if not settings.token:
            raise SluiceError("no token: set SLUICE_TOKEN or pass --token")
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SluiceClient:
        context = ssl.create_default_context(
            cafile=str(self._settings.ca_file) if self._settings.ca_file else None)
        self._session = aiohttp.ClientSession(
            self._settings.url.rstrip("/"),
            headers={"Authorization": f"Bearer {self._settings.token}"},
            connector=aiohttp.TCPConnector(ssl=context),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use SluiceClient as an async context manager"
        return self._session

    async def submit(self, body: AsyncIterable[bytes], *, target: str, operation: str,
                     content_type: str, content_encoding: str | None = None,
                     retry_of: str | None = None, idempotency_key: str | None = None
                     ) -> dict[str, Any]:
        """POST a body (streamed, chunked) as one bulk operation; its 202 answer."""
        params = {"target": target, "operation": operation}
        if retry_of:
            params["retry_of"] = retry_of
        headers = {"Content-Type": content_type}
        if content_encoding:
            headers["Content-Encoding"] = content_encoding
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        async with self.session.post("/v1/bulk-operations", params=params, data=body,
                                     headers=headers) as response:
            await _raise_for_problem(response)
            answer: dict[str, Any] = await response.json()
            return answer

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self.session.get(f"/v1/bulk-operations/{job_id}") as response:
            await _raise_for_problem(response)
            job: dict[str, Any] = await response.json()
            return job

    async def jobs(self, *, limit: int, state: str | None = None, target: str | None = None
                   ) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs of the caller's tenant, following pages as needed."""
        found: list[dict[str, Any]] = []
        params = {"limit": str(min(limit, 100))}
        if state:
            params["state"] = state
        if target:
            params["target"] = target
        url: str | None = "/v1/bulk-operations"
        while url is not None and len(found) < limit:
            async with self.session.get(url, params=params) as response:
                await _raise_for_problem(response)
                page = await response.json()
            found.extend(page["jobs"])
            url, params = page["links"].get("next"), {}
        return found[:limit]

    async def results(self, job_id: str, status: str = "all") -> AsyncIterator[dict[str, Any]]:
        """A job's result lines as they stream, decoded one at a time (a line holds at most a
        4 KB record and its message, well within aiohttp's line limit)."""
        async with self.session.get(f"/v1/bulk-operations/{job_id}/results",
                                    params={"status": status}) as response:
            await _raise_for_problem(response)
            async for line in response.content:
                if line.strip():
                    yield orjson.loads(line)
