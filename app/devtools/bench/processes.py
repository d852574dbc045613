"""The processes a benchmark measures: services once, then web and worker per configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.devtools.devauth import DevAuth, dev_environment, dev_token, ensure_dev_auth
from app.devtools.embedded import EmbeddedStack, free_port, stop_processes, wait_for_port
from app.settings import Settings, env_var


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


@dataclass
class Pipeline:
    """One worker and one web process sharing a fresh topic prefix and consumer group."""

    name: str
    base_url: str
    web_metrics_url: str
    """The web process's metrics port (not its API port)."""
    worker_metrics_url: str
    topic_prefix: str
    web: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    auth_headers: dict[str, str]
    """A dev token for the bench's requests: authentication is on, as with `sluice run`."""

    def stop(self) -> None:
        """Stop both processes (TERM, then KILL after 15 s)."""
        stop_processes((self.web, self.worker))


@dataclass
class BenchServices:
    """Broker, PostgreSQL and Valkey: embedded unless the settings point elsewhere."""

    settings: Settings
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
        """Start a worker and a web process with these settings (on top of the environment)."""
        run = uuid.uuid4().hex[:6]
        port, metrics_port, web_metrics_port = free_port(), free_port(), free_port()
        prefix = f"bench-{name}-{run}"
        env = {
            **self.env,
            env_var("http_host"): "127.0.0.1",
            env_var("http_port"): str(port),
            env_var("worker_metrics_port"): str(metrics_port),
            env_var("web_metrics_port"): str(web_metrics_port),
            env_var("topic_prefix"): prefix,
            env_var("worker_id"): prefix,
            env_var("log_level"): "WARNING",
            **{env_var(k): v for k, v in settings.items()},
        }
        logs = self.data / "logs"
        logs.mkdir(exist_ok=True)

        def spawn(command: str) -> subprocess.Popen[bytes]:
            with open(logs / f"{prefix}-{command}.log", "ab") as out:
                return subprocess.Popen([sys.executable, "-m", "app.cli", command], env=env,
                                        stdout=out, stderr=subprocess.STDOUT)

        web = spawn("web")
        worker = spawn("worker")
        assert self._auth is not None, "start() first"
        pipeline = Pipeline(name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{web_metrics_port}",
                            f"http://127.0.0.1:{metrics_port}", prefix, web, worker,
                            {"Authorization": "Bearer " + dev_token(self._auth, self.settings)})
        self._pipelines.append(pipeline)
        wait_for_port(port, timeout=60)
        wait_for_port(metrics_port, timeout=60)
        wait_for_port(web_metrics_port, timeout=60)
        return pipeline

    def stop(self) -> None:
        """Stop every process and service started, and delete the data folder."""
        for pipeline in self._pipelines:
            pipeline.stop()
        if self._stack is not None:
            self._stack.stop()
        shutil.rmtree(self.data, ignore_errors=True)
