"""The real stack, once per test session: embedded broker, PostgreSQL and Valkey, one worker
and one web process, started exactly as `sluice run` starts them; and the Kafka lane's
3-node Apache Kafka cluster, once per session when a test asks for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from app.devtools.devauth import DevAuth, dev_environment, ensure_dev_auth, mint_token
from app.devtools.embedded import EmbeddedStack, free_port, stop_processes, wait_for_port
from app.devtools.kafka_cluster import KafkaCluster, missing_tools
from app.settings import env_var

TEST_MAX_BODY_BYTES = 8 * 1024 * 1024
STREAM_AFTER_BYTES = 512 * 1024

TEST_POLICY = """
# Added by the test suite to the generated dev policy.
[all_tenants.roles.insert-only.targets]
sensor_readings = ["insert"]

[all_tenants.subjects.limited-records.limits]
records_per_s = 1
records_burst = 10

[all_tenants.subjects.limited-requests.limits]
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


@dataclass(frozen=True)
class SecondWeb:
    """A second web process, started by `second_web`."""

    base_url: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def _start_second_web(stack: Stack, log: Path, settings: dict[str, str | None]) -> SecondWeb:
    port = int(settings.get("http_port") or free_port())
    env = {**stack.env, env_var("http_port"): str(port)}
    for name, value in settings.items():
        if value is None:
            env.pop(env_var(name), None)
        else:
            env[env_var(name)] = value
    return SecondWeb(f"http://127.0.0.1:{port}", port, _spawn("web", env, log))


def _stop_second_web(web: SecondWeb, log: Path) -> None:
    # Killed, not stopped gracefully: it owns nothing that outlives the test, and a graceful
    # stop waits for its open responses (up to 10 s).
    web.process.kill()
    web.process.wait()
    sys.stderr.write(f"\n--- tail of {log} ---\n{log.read_text(errors='replace')[-3000:]}\n")


@contextmanager
def second_web(stack: Stack, log: Path, **settings: str | None) -> Iterator[SecondWeb]:
    """A second `sluice web` process on the session's services with a few other settings
    (named as in `Settings`; None unsets one), its output appended to ``log``.

    On a free port unless ``http_port`` is among the settings; up within 60 s. Stopped on
    exit (killed), and the tail of its log written to stderr.
    """
    web = _start_second_web(stack, log, settings)
    try:
        wait_for_port(web.port, timeout=60)
        yield web
    finally:
        _stop_second_web(web, log)


@asynccontextmanager
async def second_web_async(stack: Stack, log: Path, **settings: str | None
                           ) -> AsyncIterator[SecondWeb]:
    """`second_web` for a coroutine: the waits run in a thread, so the event loop runs on."""
    web = _start_second_web(stack, log, settings)
    try:
        await asyncio.to_thread(wait_for_port, web.port, 60)
        yield web
    finally:
        await asyncio.to_thread(_stop_second_web, web, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a stack of its own (to kill or stop its processes) is slow."""
    for item in items:
        if "isolated" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@contextmanager
def running_stack(data: Path, embedded: EmbeddedStack, **settings: str) -> Iterator[Stack]:
    """A web process and a worker on ``embedded``'s services (started here, stopped after),
    with the suite's settings plus ``settings`` (named as in `Settings`)."""
    env = {**os.environ, **embedded.start()}
    # Authentication on, exactly as `sluice run` sets it up, plus a few test principals.
    auth = ensure_dev_auth(data)
    auth.policy_file.write_text(auth.policy_file.read_text() + TEST_POLICY)
    env.update(dev_environment(auth))
    port = free_port()
    env.update({
        env_var("http_port"): str(port),
        env_var("worker_metrics_port"): str(free_port()),
        env_var("web_metrics_port"): str(free_port()),
        env_var("grpc_port"): str(free_port()),
        env_var("max_body_bytes"): str(TEST_MAX_BODY_BYTES),
        env_var("worker_id"): "sluice-test-worker",
        # Envelopes naming a target nobody defines fail after this wait, not the default 60 s.
        env_var("unknown_target_wait_s"): "3",
        # The write-semantics tests upsert and delete through the input topic; the default
        # (inserts only) is tested on a stack of its own in test_kafka_producers.py.
        env_var("input_operations"): "sensor_readings=insert,upsert,delete",
        # Payloads from about 7,500 records on are produced while parsed (and written
        # early by the worker), so that the suite's bigger jobs take that path.
        env_var("stream_after_bytes"): str(STREAM_AFTER_BYTES),
        # Webhooks to a receiver on 127.0.0.1, retried after 0.25, 0.5, 1, 2, 2… s and given
        # up 8 s after they were queued, so that test_webhooks.py sees both in seconds.
        env_var("webhook_private_destinations"): "true",
        env_var("webhook_retry_base_s"): "0.25",
        env_var("webhook_retry_cap_s"): "2",
        env_var("webhook_max_age_s"): "8",
        env_var("webhook_timeout_s"): "1",
        env_var("webhook_poll_s"): "0.25",
        **{env_var(name): value for name, value in settings.items()},
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


def stack_folder() -> Path:
    """A fresh folder for a stack's data. Not pytest's tmp_path: PostgreSQL runs as its own
    system user when started as root, and pytest's 0700 temporary folders keep it out."""
    data = Path(tempfile.mkdtemp(prefix="sluice-test-"))
    data.chmod(0o755)
    return data


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    data = stack_folder()
    with running_stack(data, EmbeddedStack(data_dir=data)) as running:
        yield running


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """Three Apache Kafka nodes (replication factor 3, min.insync.replicas 2) shared by the
    Kafka lane: skipped, loudly, without a JDK and Maven, and failed instead when
    SLUICE_TEST_REQUIRE_KAFKA is set (as `.ci/run` sets it)."""
    reason = missing_tools()
    if reason is not None:
        message = f"Kafka lane SKIPPED: Apache Kafka cannot run here ({reason})"
        if os.environ.get("SLUICE_TEST_REQUIRE_KAFKA"):
            pytest.fail(message + "; SLUICE_TEST_REQUIRE_KAFKA is set")
        pytest.skip(message)
    data = stack_folder()
    cluster = KafkaCluster(data / "kafka", nodes=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.discard()
        shutil.rmtree(data, ignore_errors=True)


def on_cluster(cluster: KafkaCluster) -> dict[str, str]:
    """The settings (named as in `Settings`) of processes using ``cluster``'s topics."""
    return {"topic_replication_factor": str(cluster.replication_factor),
            "topic_min_insync_replicas": str(cluster.min_insync_replicas)}


@asynccontextmanager
async def http_session(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the stack's web process, authenticated as `sluice run`'s dev token."""
    async with aiohttp.ClientSession(stack.base_url, headers=stack.auth_headers) as session:
        yield session


@asynccontextmanager
async def db_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the stack's PostgreSQL."""
    pool = await asyncpg.create_pool(stack.dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session(stack) as session:
        yield session


@pytest.fixture(scope="session")
async def db(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    async with db_pool(stack) as pool:
        yield pool
