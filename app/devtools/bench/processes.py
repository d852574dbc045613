"""The processes a benchmark measures: services once, then web and worker per configuration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.devtools.devauth import DevAuth, dev_environment, dev_token, ensure_dev_auth
from app.devtools.embedded import EmbeddedStack, free_port, stop_processes, wait_for_port
from app.settings import Settings, env_var

BENCH_SETTINGS = {
    "rate_requests_per_s": "100000", "rate_requests_burst": "200000",
    "rate_principal_requests_per_s": "100000", "rate_principal_requests_burst": "200000",
    "rate_tenant_requests_per_s": "100000", "rate_tenant_requests_burst": "200000",
    "rate_records_per_s": "10000000", "rate_records_burst": "50000000",
    "rate_principal_records_per_s": "10000000", "rate_principal_records_burst": "50000000",
    "rate_tenant_records_per_s": "10000000", "rate_tenant_records_burst": "50000000",
}
"""What every bench pipeline runs with on top of the defaults: one token plays 40 clients
polling at 50 Hz and submits millions of records in a minute, so the rate limits (meant
for many principals sharing a service) are raised for its processes only. The buckets are
still charged on every request, so their cost stays in the figures; admission limits
(upload slots, queue depth) keep their defaults."""


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far, user and system (Linux /proc)."""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssWatch:
    """Samples processes' resident memory every 20 ms in a task: the highest of any one of
    them over the whole watch, and since the last ``new_window`` (one payload of a long run)."""

    def __init__(self, *pids: int, interval_s: float = 0.02) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak = 0
        self.window_peak = 0
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        rss = max(rss_bytes(pid) for pid in self.pids)
        self.peak = max(self.peak, rss)
        self.window_peak = max(self.window_peak, rss)

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> RssWatch:
        """Begin sampling (one sample at once)."""
        self._sample()
        self._task = asyncio.create_task(self._run())
        return self

    def new_window(self) -> int:
        """End the current window: its peak; the next window starts from the current RSS."""
        peak = self.window_peak
        self.window_peak = 0
        self._sample()
        return peak

    async def stop(self) -> int:
        """Stop sampling (one last sample first): the peak over the whole watch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._sample()
        return self.peak


@dataclass
class Pipeline:
    """A web process and SLUICE_LOCAL_WORKERS worker processes (as `sluice run` starts them)
    sharing a fresh topic prefix and consumer group."""

    name: str
    base_url: str
    web_metrics_url: str
    """The web process's metrics port (not its API port)."""
    worker_metrics_urls: list[str]
    topic_prefix: str
    web: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    auth_headers: dict[str, str]
    """A dev token for the bench's requests: authentication is on, as with `sluice run`."""
    grpc_port: int = 0
    """The web process's gRPC BulkIngest port."""

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def stop(self) -> None:
        """Stop every process (TERM, then KILL after 15 s)."""
        stop_processes((self.web, *self.workers))


@dataclass
class BenchServices:
    """Broker, PostgreSQL and Valkey: embedded unless the settings point elsewhere."""

    settings: Settings
    broker: Literal["embedded", "kafka"] = "embedded"
    """The broker started when the settings name none: the pip one, or Apache Kafka."""
    kafka_nodes: int = 1
    data: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sluice-bench-")))
    env: dict[str, str] = field(default_factory=dict)
    _stack: EmbeddedStack | None = None
    _auth: DevAuth | None = None
    _pipelines: list[Pipeline] = field(default_factory=list)

    def start(self) -> BenchServices:
        """Start whatever is not configured."""
        # PostgreSQL started as root runs as its own user: keep the folder readable.
        self.data.chmod(0o755)
        s = self.settings
        self._stack = EmbeddedStack(
            data_dir=self.data,
            kafka_bootstrap=s.kafka_bootstrap,
            database_url=s.database_url.get_secret_value() if s.database_url else None,
            redis_url=s.redis_url.get_secret_value() if s.redis_url else None,
            broker=self.broker,
            kafka_nodes=self.kafka_nodes,
        )
        self.env = {**os.environ, **self._stack.start()}
        # The same dev key, JWKS and policy `sluice run` generates, in the bench's folder.
        self._auth = ensure_dev_auth(self.data)
        self.env.update(dev_environment(self._auth))
        return self

    @property
    def dsn(self) -> str:
        """Where PostgreSQL is."""
        return self.env[env_var("database_url")]

    @property
    def kafka(self) -> str:
        """Where the broker is."""
        return self.env[env_var("kafka_bootstrap")]

    def pipeline(self, name: str, **settings: str) -> Pipeline:
        """Start a worker and a web process with these settings (on top of the environment
        and BENCH_SETTINGS)."""
        run = uuid.uuid4().hex[:6]
        workers = int(settings.get("local_workers", self.settings.local_workers))
        ports: set[int] = set()
        while len(ports) < workers + 3:  # all different: a port picked twice would serve one process
            ports.add(free_port())
        port, web_metrics_port, grpc_port, *metrics_ports = ports
        prefix = f"bench-{name}-{run}"
        env = {
            **self.env,
            env_var("http_host"): "127.0.0.1",
            env_var("http_port"): str(port),
            env_var("web_metrics_port"): str(web_metrics_port),
            env_var("grpc_port"): str(grpc_port),
            env_var("topic_prefix"): prefix,
            env_var("worker_id"): prefix,
            env_var("log_level"): "WARNING",
            **{env_var(k): v for k, v in {**BENCH_SETTINGS, **settings}.items()},
        }
        logs = self.data / "logs"
        logs.mkdir(exist_ok=True)

        def spawn(command: str, log: str, **extra: str) -> subprocess.Popen[bytes]:
            with open(logs / f"{prefix}-{log}.log", "ab") as out:
                return subprocess.Popen([sys.executable, "-m", "app.cli", command],
                                        env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT)

        web = spawn("web", "web")
        worker_processes = [
            spawn("worker", f"worker{n}", **{env_var("worker_metrics_port"): str(metrics_port)})
            for n, metrics_port in enumerate(metrics_ports)]
        assert self._auth is not None, "start() first"
        pipeline = Pipeline(name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{web_metrics_port}",
                            [f"http://127.0.0.1:{p}" for p in metrics_ports], prefix, web,
                            worker_processes,
                            {"Authorization": "Bearer " + dev_token(self._auth, self.settings)},
                            grpc_port)
        self._pipelines.append(pipeline)
        for p in (port, web_metrics_port, grpc_port, *metrics_ports):
            wait_for_port(p, timeout=60)
        return pipeline

    def stop(self) -> None:
        """Stop every process and service started, and delete the data folder."""
        for pipeline in self._pipelines:
            pipeline.stop()
        if self._stack is not None:
            self._stack.stop()
        shutil.rmtree(self.data, ignore_errors=True)
