"""The real stack, once per test session: embedded broker, PostgreSQL and Valkey, one worker
and one web process, started exactly as `sluice run` starts them."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from app.devauth import DevAuth, dev_environment, ensure_dev_auth, mint_token
from app.embedded import EmbeddedStack, free_port, stop_processes, wait_for_port
from app.settings import env_var

TEST_MAX_BODY_BYTES = 8 * 1024 * 1024

TEST_POLICY = """
# Added by the test suite to the generated dev policy.
[roles.insert-only.targets]
sensor_readings = ["insert"]

[subjects.limited-records.limits]
records_per_s = 1
records_burst = 10

[subjects.limited-requests.limits]
requests_per_s = 0.02
requests_burst = 3
"""


def token_for(auth: DevAuth, subject: str = "dev", tenant: str = "dev",
              scopes: tuple[str, ...] = ("bulk:write", "bulk:read"),
              roles: tuple[str, ...] = ("dev",), ttl_s: int = 3600) -> str:
    """A token signed by the stack's dev key (the one `sluice run` generates)."""
    return mint_token(auth, subject=subject, tenant=tenant, scopes=scopes, roles=roles, ttl_s=ttl_s)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Stack:
    """Addresses of the running test stack."""

    base_url: str
    kafka: str
    dsn: str
    redis_url: str
    env: dict[str, str]
    web_pid: int
    auth: DevAuth
    data: Path

    @property
    def auth_headers(self) -> dict[str, str]:
        """A fresh dev token, as `sluice run` prints it."""
        return bearer(token_for(self.auth))


def _spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "app.cli", command],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Not pytest's tmp_path: PostgreSQL runs as its own system user when started as
    # root, and pytest's 0700 temporary folders keep that user out.
    data = Path(tempfile.mkdtemp(prefix="sluice-test-"))
    data.chmod(0o755)
    embedded = EmbeddedStack(data_dir=data)
    env = {**os.environ, **embedded.start()}
    # Authentication on, exactly as `sluice run` sets it up, plus a few test principals.
    auth = ensure_dev_auth(data)
    auth.policy_file.write_text(auth.policy_file.read_text() + TEST_POLICY)
    env.update(dev_environment(auth))
    port = free_port()
    env.update({
        env_var("http_port"): str(port),
        env_var("worker_metrics_port"): str(free_port()),
        env_var("max_body_bytes"): str(TEST_MAX_BODY_BYTES),
        env_var("worker_id"): "sluice-test-worker",
        # Envelopes naming a target nobody defines fail after this wait, not the default 60 s.
        env_var("unknown_target_wait_s"): "3",
    })
    children = [_spawn("web", env, data / "web.log"), _spawn("worker", env, data / "worker.log")]
    try:
        wait_for_port(port, timeout=60)
        yield Stack(f"http://127.0.0.1:{port}", env[env_var("kafka_bootstrap")],
                    env[env_var("database_url")], env[env_var("redis_url")], env,
                    children[0].pid, auth, data)
    finally:
        stop_processes(children)
        embedded.stop()
        for name in ("web.log", "worker.log"):
            tail = (data / name).read_text(errors="replace")[-3000:]
            sys.stderr.write(f"\n--- tail of {name} ---\n{tail}\n")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(stack.base_url, headers=stack.auth_headers) as session:
        yield session


@pytest.fixture(scope="session")
async def db(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(stack.dsn, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


async def wait_terminal(http: aiohttp.ClientSession, job_id: str, wait_s: float = 120) -> dict[str, Any]:
    """Poll a job until it is in a terminal state."""
    deadline = time.monotonic() + wait_s
    while True:
        async with http.get(f"/v1/bulk-operations/{job_id}") as r:
            assert r.status == 200, await r.text()
            job: dict[str, Any] = await r.json()
        if job["state"] in ("completed", "completed_with_errors", "failed"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {wait_s}s: {job}")
        await asyncio.sleep(0.2)


async def results(http: aiohttp.ClientSession, job_id: str, status: str = "all") -> list[dict[str, Any]]:
    """A job's result lines, parsed."""
    import orjson

    async with http.get(f"/v1/bulk-operations/{job_id}/results", params={"status": status}) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/x-ndjson"
        body = await r.read()
    return [orjson.loads(line) for line in body.splitlines() if line]
