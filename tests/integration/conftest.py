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

from app.embedded import EmbeddedStack, free_port, wait_for_port
from app.settings import env_var

TEST_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Stack:
    """Addresses of the running test stack."""

    base_url: str
    kafka: str
    dsn: str
    redis_url: str
    env: dict[str, str]
    web_pid: int


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
    port = free_port()
    env.update({
        env_var("http_port"): str(port),
        env_var("worker_metrics_port"): str(free_port()),
        env_var("max_body_bytes"): str(TEST_MAX_BODY_BYTES),
        env_var("worker_id"): "sluice-test-worker",
    })
    children = [_spawn("web", env, data / "web.log"), _spawn("worker", env, data / "worker.log")]
    try:
        wait_for_port(port, timeout=60)
        yield Stack(f"http://127.0.0.1:{port}", env[env_var("kafka_bootstrap")],
                    env[env_var("database_url")], env[env_var("redis_url")], env,
                    children[0].pid)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        embedded.stop()
        for name in ("web.log", "worker.log"):
            tail = (data / name).read_text(errors="replace")[-3000:]
            sys.stderr.write(f"\n--- tail of {name} ---\n{tail}\n")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(stack.base_url) as session:
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
