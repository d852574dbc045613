"""Tenants against each other, through real web processes, real PostgreSQL and real Valkey:
tenant-scoped policy rules and buckets, fair upload slots and queue shares, whole-submission
record charges, and rate limits that hold when Valkey is out of memory or down.

Each web process here runs on the session's broker and PostgreSQL but on a Valkey of its
own, so that this module can exhaust it and stop it without touching other tests.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as redis

from app.devtools.embedded import EmbeddedValkey, free_port
from tests.integration.conftest import Stack, bearer, second_web, token_for
from tests.integration.helpers import NDJSON, ndjson, reading

BULK = "/v1/bulk-operations"
TARGET = {"target": "sensor_readings"}

# Rules for every tenant.
GLOBAL_POLICY = """
[all_tenants.roles.dev.targets]
"*" = ["insert", "upsert", "delete"]

[all_tenants.subjects.tiny.limits]
requests_per_s = 0.01
requests_burst = 3

[all_tenants.subjects.tiny-oom.limits]
requests_per_s = 0.01
requests_burst = 3

[all_tenants.subjects.tiny-down.limits]
requests_per_s = 0.01
requests_burst = 3

[all_tenants.subjects.ten-records.limits]
records_per_s = 0.01
records_burst = 10
"""

TENANT_POLICY = """
[tenants.acme.roles.loader.targets]
sensor_readings = ["insert"]

[tenants.acme.subjects.cleaner.targets]
sensor_readings = ["delete"]

[tenants.capped.roles.dev.targets]
"*" = ["insert"]

[tenants.capped.limits]
requests_per_s = 0.01
requests_burst = 4
"""


@dataclass
class Web:
    """A web process of this module, with its own Valkey."""

    port: int
    metrics_port: int
    valkey: EmbeddedValkey
    auth: Any
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, subject: str, tenant: str, roles: tuple[str, ...] = ("dev",)) -> str:
        return token_for(self.auth, subject=subject, tenant=tenant, roles=roles)


def _port_below_the_ephemeral_range() -> int:
    """A free port no outgoing connection can take as its source port: while this Valkey is
    stopped, a client connecting to it could otherwise connect to itself on that port (TCP
    self-connect) and keep the restarted Valkey from binding it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12_000), low), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _bucket_keys(valkey: EmbeddedValkey, pattern: str) -> list[bytes]:
    """Rate-limit keys in Valkey, read over a new connection (the restarted server's own
    readiness check connects the same way)."""
    client = valkey.server.client(socket_connect_timeout=5)
    try:
        return list(client.scan_iter(match=pattern))
    finally:
        client.close()


def _start_web(stack: Stack, policy: str, **settings: str) -> Iterator[Web]:
    directory = Path(tempfile.mkdtemp(prefix="sluice-fair-"))
    directory.chmod(0o755)
    valkey = EmbeddedValkey(directory / "valkey", port=_port_below_the_ephemeral_range())
    (directory / "valkey").mkdir()
    valkey.start()
    policy_file = directory / "policy.toml"
    policy_file.write_text(policy)
    metrics_port = free_port()
    try:
        with second_web(stack, directory / "web.log", redis_url=valkey.url,
                        web_metrics_port=str(metrics_port), access_policy_file=str(policy_file),
                        **settings) as web:
            yield Web(web.port, metrics_port, valkey, stack.auth, web.process)
    finally:
        valkey.stop()


@pytest.fixture(scope="module")
def global_web(stack: Stack) -> Iterator[Web]:
    """Three upload slots in all, two per tenant; a tenant's queue share is 500 records."""
    yield from _start_web(stack, GLOBAL_POLICY, max_concurrent_uploads="3", max_tenant_uploads="2",
                          max_tenant_queue_records="500")


@pytest.fixture(scope="module")
def tenant_web(stack: Stack) -> Iterator[Web]:
    yield from _start_web(stack, TENANT_POLICY)


@pytest.fixture
async def valkey_client(global_web: Web) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(global_web.valkey.url)
    yield client
    await client.aclose()


async def _call(web: Web, method: str, path: str, token: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession(web.url) as session, \
            session.request(method, path, headers={**bearer(token), **kwargs.pop("headers", {})},
                            **kwargs) as r:
        body = await r.json(content_type=None) if r.content_type.endswith("json") else None
        return r.status, body, r.headers


async def _post(web: Web, token: str, records: int, tag: str) -> tuple[int, Any, Any]:
    return await _call(web, "POST", BULK, token, params=TARGET, headers=NDJSON,
                       data=ndjson([reading(tag, i) for i in range(records)]))


async def _gets(web: Web, token: str, n: int) -> list[int]:
    return [(await _call(web, "GET", f"{BULK}/{uuid.uuid4()}", token))[0] for _ in range(n)]


def _tenant(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


# 3. Tenant-scoped policy rules and buckets ---------------------------------------------------

async def test_a_role_grants_rights_only_in_the_tenant_that_names_it(tenant_web: Web) -> None:
    tag = _tenant("role")
    loader_acme = tenant_web.token("someone", "acme", roles=("loader",))
    loader_elsewhere = tenant_web.token("someone", _tenant("other"), roles=("loader",))
    assert (await _post(tenant_web, loader_acme, 2, tag))[0] == 202
    status, body, _ = await _post(tenant_web, loader_elsewhere, 2, tag)
    assert status == 403, body
    assert body["type"].endswith("/target-not-allowed")
    # a subject rule is the (tenant, sub) pair: the same sub in another tenant has nothing
    for tenant, expected in (("acme", 202), (_tenant("other"), 403)):
        status, body, _ = await _call(tenant_web, "POST", BULK, tenant_web.token("cleaner", tenant, ()),
                                      params={**TARGET, "operation": "delete"}, headers=NDJSON,
                                      data=ndjson([reading(tag, 0)]))
        assert status == expected, (tenant, body)


async def test_a_tenant_bucket_caps_all_of_its_subjects_together(tenant_web: Web) -> None:
    # [tenants.capped.limits] requests_burst = 4: five subjects, one request each
    statuses = [(await _gets(tenant_web, tenant_web.token(f"s{i}", "capped"), 1))[0] for i in range(5)]
    assert statuses == [404, 404, 404, 404, 429]
    # another tenant is not affected
    assert await _gets(tenant_web, tenant_web.token("s0", _tenant("free")), 1) == [404]


async def test_the_same_subject_in_two_tenants_has_two_buckets(global_web: Web) -> None:
    first, second = _tenant("a"), _tenant("b")
    assert await _gets(global_web, global_web.token("tiny", first), 4) == [404, 404, 404, 429]
    # "tiny" of another tenant is another principal: its own burst of 3
    assert await _gets(global_web, global_web.token("tiny", second), 1) == [404]


# 4. Fair shares and whole-submission charges ---------------------------------------------------

async def _open_slow_upload(web: Web, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Headers and a first record of a body that never finishes: the upload holds its slot."""
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    first = ndjson([reading("slow", 0)])
    writer.write(f"POST {BULK}?target=sensor_readings HTTP/1.1\r\nHost: localhost\r\n"
                 f"Authorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\n"
                 f"Content-Length: {len(first) * 1000}\r\n\r\n".encode() + first)
    await writer.drain()
    return reader, writer


async def _answered(reader: asyncio.StreamReader, within_s: float) -> bytes | None:
    """The status line if the server answered within the delay; None if it is still reading."""
    try:
        return await asyncio.wait_for(reader.readline(), within_s)
    except TimeoutError:
        return None


async def test_one_tenant_cannot_take_every_upload_slot(global_web: Web) -> None:
    hog = global_web.token("hog", _tenant("hog"))
    uploads, answers = [], []
    try:
        for _ in range(3):  # one after the other: each is admitted (or not) before the next
            uploads.append(await _open_slow_upload(global_web, hog))
            answers.append(await _answered(uploads[-1][0], 1.0))
        # another tenant still gets a slot, and is accepted
        status, body, _ = await _post(global_web, global_web.token("polite", _tenant("polite")), 3,
                                      _tenant("polite"))
        assert status == 202, body
        # the hog's first two hold their slots; its third is refused at once, for its tenant alone
        assert answers[:2] == [None, None]
        assert answers[2] is not None and answers[2].startswith(b"HTTP/1.1 429"), answers
        head = await asyncio.wait_for(uploads[2][0].read(4096), 5)
        assert b"Retry-After: 1" in head and b"tenant-uploads" in head
    finally:
        for _, writer in uploads:
            writer.close()


async def test_a_tenant_over_its_queue_share_is_refused_and_others_are_not(
    global_web: Web, db: asyncpg.Pool
) -> None:
    busy, calm = _tenant("busy"), _tenant("calm")
    fake = str(uuid.uuid4())
    # A backlog of 1,000 records for the busy tenant (its share is 500): an accepted job
    # without envelopes, which nothing will ever drain.
    await db.execute("INSERT INTO sluice_jobs (job_id, target, operation, source, state,"
                     " records_received, tenant, principal, accepted_at)"
                     " VALUES ($1, 'sensor_readings', 'insert', 'http', 'accepted', 1000, $2,"
                     " 'busy', now())", fake, busy)
    try:
        deadline = time.monotonic() + 5  # the backlog is read at most once a second
        while True:
            status, body, headers = await _post(global_web, global_web.token("busy", busy), 1, busy)
            if status != 202 or time.monotonic() > deadline:
                break
        assert status == 429, body
        assert body["type"].endswith("/tenant-backpressure")
        assert headers["Retry-After"] == "5"
        status, body, _ = await _post(global_web, global_web.token("calm", calm), 1, calm)
        assert status == 202, body
    finally:
        await db.execute("DELETE FROM sluice_jobs WHERE job_id = $1", fake)


async def test_a_submission_larger_than_the_record_burst_is_refused_whole(
    global_web: Web, db: asyncpg.Pool
) -> None:
    tenant = _tenant("burst")
    token = global_web.token("ten-records", tenant)  # records burst 10, refills 1 per 100 s
    status, body, headers = await _post(global_web, token, 15, tenant)
    assert status == 413, body
    assert body["type"].endswith("/submission-exceeds-burst")
    assert (body["records"], body["burst"]) == (15, 10)
    assert "Retry-After" not in headers  # waiting does not help: it must be split
    assert await db.fetchval("SELECT count(*) FROM sluice_jobs WHERE tenant = $1", tenant) == 0
    # ten records fit the burst and take all of it
    assert (await _post(global_web, token, 10, tenant))[0] == 202
    status, body, _ = await _post(global_web, token, 1, tenant)
    assert status == 429, body


# 6. Rate limits when Valkey fails ---------------------------------------------------------------

async def _fallbacks(web: Web, reason: str) -> float:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{web.metrics_port}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f'sluice_rate_limit_fallback_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_limits_hold_while_valkey_answers_out_of_memory(
    global_web: Web, valkey_client: redis.Redis
) -> None:
    before = await _fallbacks(global_web, "error")
    await valkey_client.config_set("maxmemory-policy", "noeviction")
    await valkey_client.config_set("maxmemory", 1)
    try:
        statuses = await _gets(global_web, global_web.token("tiny-oom", _tenant("oom")), 5)
    finally:
        await valkey_client.config_set("maxmemory", 0)
    assert statuses == [404, 404, 404, 429, 429]
    assert await _fallbacks(global_web, "error") >= before + 5


async def test_limits_hold_while_valkey_is_down_and_valkey_is_used_again_after(global_web: Web) -> None:
    global_web.valkey.stop()
    try:
        started = time.monotonic()
        statuses = await _gets(global_web, global_web.token("tiny-down", _tenant("down")), 5)
        elapsed = time.monotonic() - started
        fallbacks = await _fallbacks(global_web, "unreachable")
    finally:
        global_web.valkey.start()  # returns once it answers PING
    assert statuses == [404, 404, 404, 429, 429]
    assert fallbacks >= 1
    assert elapsed < 10, elapsed  # answered, not hung on Redis
    print(f"5 requests with Valkey down answered in {elapsed:.3f} s")
    await asyncio.sleep(1.5)  # past the retry interval: the next check asks Valkey again
    back = _tenant("back")
    assert await _gets(global_web, global_web.token("tiny-down", back), 1) == [404]
    keys = await asyncio.to_thread(_bucket_keys, global_web.valkey, f"sluice:ratelimit:*{back}*")
    assert keys, "the bucket is in Valkey again"
