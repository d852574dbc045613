"""Clients that ask for a job's results and never read them (issue 11), against real processes.

A results response is far larger than the socket buffers, so the web process ends up
waiting on such a client. It must do that waiting holding no database connection, and
not for ever: other tenants' submissions and job polls are answered all the while, and
the stalled responses are ended after the send timeout.

The stalled readers talk to a web process of their own (started here, on the session's
broker, PostgreSQL and Valkey, with a short send timeout) so that the rest of the suite's
web process is never disturbed by them.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest

from tests.integration.conftest import SecondWeb, Stack, bearer, second_web, token_for
from tests.integration.helpers import NDJSON, big_job, ndjson, reading, submit, wait_terminal

READERS = 20
RECORDS = 100_000
"""Some 9 MB of NDJSON results: far more than a socket that is never read absorbs (about
3 MB here: the server's send buffer grows to net.core.wmem_max)."""
SEND_TIMEOUT_S = 8.0
ANSWER_WITHIN_S = 10.0
"""Functional bound only ("answered at all" vs "never answered"); the figure is printed."""
STALLED_CLIENT_RCVBUF = 4096


@pytest.fixture(scope="module")
def own_web(stack: Stack) -> Iterator[SecondWeb]:
    """A second `sluice web` on the session's services, with a short results send timeout."""
    with second_web(stack, stack.data / "web-slow-readers.log",
                    results_send_timeout_s=str(SEND_TIMEOUT_S)) as web:
        yield web


@pytest.fixture(scope="module")
async def big_finished_job(http: aiohttp.ClientSession) -> str:
    """A finished job of RECORDS records (a few invalid), owned by the dev tenant."""
    body, _ = big_job(f"sr-{uuid.uuid4().hex[:6]}", RECORDS, invalid_every=5_000)
    accepted = await submit(http, body)
    await wait_terminal(http, accepted["job_id"], wait_s=240)
    return str(accepted["job_id"])


class StalledReader:
    """A raw connection that sends one results request and then never reads."""

    def __init__(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
        self.writer, self.reader = writer, reader

    @classmethod
    async def open(cls, base_url: str, path: str, token: str) -> StalledReader:
        url = urlsplit(base_url)
        assert url.hostname is not None and url.port is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Small before connecting, so that the window it advertises stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_CLIENT_RCVBUF)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
        # A small stream limit: asyncio itself buffers no more than this before it stops reading.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}"
                     "\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return cls(writer, reader)

    async def read_to_end(self) -> tuple[bytes, bool]:
        """Everything that arrives until the server ends the connection; whether it was reset."""
        data = bytearray()
        try:
            while chunk := await self.reader.read(1 << 16):
                data += chunk
        except ConnectionResetError:
            return bytes(data), True
        return bytes(data), False

    async def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def stalled_readers(stack: Stack, own_web: SecondWeb, big_finished_job: str
                          ) -> AsyncIterator[list[StalledReader]]:
    token = token_for(stack.auth)
    path = f"/v1/bulk-operations/{big_finished_job}/results"
    readers = [await StalledReader.open(own_web.base_url, path, token) for _ in range(READERS)]
    # Let the web process fill their socket buffers and block on them (the state under test).
    await asyncio.sleep(1.0)
    try:
        yield readers
    finally:
        for r in readers:
            await r.close()


async def _timed(request: Awaitable[None]) -> float:
    """Seconds until ``request`` is answered; fails if it is not within ANSWER_WITHIN_S."""
    started = time.perf_counter()
    await asyncio.wait_for(request, ANSWER_WITHIN_S)
    return time.perf_counter() - started


async def test_stalled_results_readers_do_not_block_another_tenants_requests(
    stack: Stack, own_web: SecondWeb, big_finished_job: str, stalled_readers: list[StalledReader],
) -> None:
    other = bearer(token_for(stack.auth, subject="bystander", tenant=f"other-{uuid.uuid4().hex[:6]}"))
    async with aiohttp.ClientSession(own_web.base_url, headers=other) as bystander, \
            aiohttp.ClientSession(own_web.base_url, headers=stack.auth_headers) as owner:

        async def post_one() -> None:
            async with bystander.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                                      data=ndjson([reading(f"bystander-{uuid.uuid4().hex[:6]}", 1)]),
                                      headers=NDJSON) as r:
                assert r.status == 202, await r.text()

        async def poll_status() -> None:
            async with owner.get(f"/v1/bulk-operations/{big_finished_job}") as r:
                assert r.status == 200, await r.text()

        post_s = await _timed(post_one())
        status_s = await _timed(poll_status())
    print(f"\nwith {READERS} stalled results readers: 1-record POST of another tenant answered in "
          f"{post_s * 1000:.0f} ms, job status in {status_s * 1000:.0f} ms")


async def test_stalled_results_response_is_ended_after_the_send_timeout(
    stalled_readers: list[StalledReader],
) -> None:
    # The server stops waiting on each stalled client after SEND_TIMEOUT_S and drops it.
    await asyncio.sleep(SEND_TIMEOUT_S + 2.0)
    for reader in stalled_readers:
        data, reset = await asyncio.wait_for(reader.read_to_end(), ANSWER_WITHIN_S)
        assert reset or data.startswith(b"HTTP/1.1 200")
        # Never the whole response: the chunked body ends without its final chunk.
        assert not data.endswith(b"\r\n0\r\n\r\n"), "a stalled response was sent to its end"


async def test_results_unchanged_across_pages(
    own_web: SecondWeb, stack: Stack, big_finished_job: str, db: asyncpg.Pool,
) -> None:
    """Every outcome once, in index order, rendered as the ledger holds it, for each filter."""
    ledger = await db.fetch("SELECT idx, status, key, code, message FROM sluice_record_results"
                            " WHERE job_id = $1 ORDER BY idx", big_finished_job)
    async with aiohttp.ClientSession(own_web.base_url, headers=stack.auth_headers) as http:
        for status in ("all", "succeeded", "failed", "duplicate"):
            async with http.get(f"/v1/bulk-operations/{big_finished_job}/results",
                                params={"status": status}) as r:
                assert r.status == 200
                assert r.content_type == "application/x-ndjson"
                lines = [orjson.loads(line) for line in (await r.read()).splitlines() if line]
            expected = [row for row in ledger if status == "all" or row["status"] == status]
            assert [line["index"] for line in lines] == [row["idx"] for row in expected]
            for line, row in zip(lines, expected, strict=True):
                assert line["status"] == row["status"]
                assert line["key"] == (orjson.loads(row["key"]) if row["key"] else None)
                assert line.get("code") == row["code"] and line.get("message") == row["message"]
    assert len([row for row in ledger if row["status"] == "failed"]) == RECORDS // 5_000


