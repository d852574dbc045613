"""A stack of its own for a fault-injection test: its services can be stopped, killed and
restarted without disturbing the session's shared stack."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.devtools.devauth import DevAuth, dev_environment, dev_token, ensure_dev_auth
from app.devtools.embedded import EmbeddedStack, free_port, stop_processes, wait_for_port
from app.devtools.kafka_cluster import KafkaCluster
from app.settings import Settings, env_var
from app.topics import TopicNames


@dataclass
class IsolatedStack:
    """Own broker, PostgreSQL and Valkey; web and worker processes started on demand."""

    settings: dict[str, str] = field(default_factory=dict)
    data: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sluice-fault-")))
    embedded: EmbeddedStack | None = None
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    """Pids this test killed on purpose; any other process that exited crashed."""
    base_url: str = ""
    auth: DevAuth | None = None
    broker: Literal["embedded", "kafka"] = "embedded"
    kafka_nodes: int = 1
    kafka: KafkaCluster | None = None
    """A cluster shared with other tests (the Kafka lane's) instead of a broker of its own:
    this stack's topics and consumer groups then get a prefix of their own."""

    def start(self) -> IsolatedStack:
        """Start the three services (the processes come later, one by one)."""
        self.data.chmod(0o755)
        shared: dict[str, str] = {}
        if self.kafka is not None:
            prefix = f"iso-{uuid.uuid4().hex[:8]}"
            shared = {env_var("topic_prefix"): prefix,
                      env_var("topic_replication_factor"): str(self.kafka.replication_factor),
                      env_var("topic_min_insync_replicas"): str(self.kafka.min_insync_replicas)}
        self.embedded = EmbeddedStack(data_dir=self.data, broker=self.broker,
                                      kafka_nodes=self.kafka_nodes,
                                      kafka_bootstrap=self.kafka.bootstrap if self.kafka else None)
        port = free_port()
        self.auth = ensure_dev_auth(self.data)
        self.env = {
            **os.environ,
            **self.embedded.start(),
            **dev_environment(self.auth),
            env_var("http_port"): str(port),
            env_var("worker_metrics_port"): "0",
            env_var("web_metrics_port"): "0",
            env_var("worker_id"): f"fault-{uuid.uuid4().hex[:8]}",
            **shared,
            **self.settings,
        }
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def spawn(self, command: str, **overrides: str) -> subprocess.Popen[bytes]:
        """Start `sluice web` or `sluice worker` against this stack."""
        log = self.data / f"{command}-{len(self.processes)}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", command],
                env={**self.env, **overrides}, stdout=out, stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        if command == "web":
            port = overrides.get(env_var("http_port"), self.env[env_var("http_port")])
            wait_for_port(int(port), timeout=60)
        return process

    @property
    def auth_headers(self) -> dict[str, str]:
        """A fresh dev token for this stack's web processes."""
        assert self.auth is not None
        return {"Authorization": "Bearer " + dev_token(self.auth, Settings())}

    @property
    def topics(self) -> TopicNames:
        """This stack's topic names."""
        return TopicNames(self.env.get(env_var("topic_prefix"), Settings().topic_prefix))

    @property
    def dsn(self) -> str:
        return self.env[env_var("database_url")]

    @property
    def redis_url(self) -> str:
        return self.env[env_var("redis_url")]

    def service(self, kind: str) -> object:
        """The embedded broker, postgres or valkey object, to stop and start it."""
        assert self.embedded is not None
        if kind == "kafka" and self.kafka is not None:
            return self.kafka
        names = {"broker": "EmbeddedBroker", "postgres": "EmbeddedPostgres",
                 "valkey": "EmbeddedValkey", "kafka": "KafkaCluster"}
        return next(s for s in self.embedded.started if type(s).__name__ == names[kind])

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """kill -9: no shutdown, no offset commit, no cleanup."""
        self.killed.add(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def crashed(self) -> list[str]:
        """The web and worker processes that exited without the test killing them."""
        return [f"{p.args!s} (pid {p.pid}, exit {p.returncode})"
                for p in self.processes if p.pid not in self.killed and p.poll() is not None]

    def stop(self) -> None:
        """End everything this stack started and delete its data. Processes and services
        are killed, not stopped gracefully: nothing of this stack outlives the test, so a
        graceful stop (a checkpoint, a snapshot) only costs time."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        stop_processes(self.processes)
        if self.embedded is not None:
            self.embedded.discard()
        for log in sorted(self.data.glob("*.log")):
            tail = log.read_text(errors="replace")[-2000:]
            sys.stderr.write(f"\n--- tail of {log.name} ---\n{tail}\n")
        shutil.rmtree(self.data, ignore_errors=True)


MakeStack = Callable[..., IsolatedStack]


@contextmanager
def isolated_stacks(kafka: KafkaCluster | None = None) -> Iterator[MakeStack]:
    """Make stacks of their own (settings named as in `Settings`), on ``kafka`` if given;
    on exit stop them all, then fail if a web or worker process crashed meanwhile: a
    process that dies of a fault it should ride out is a failure even when the others
    still finish the job."""
    stacks: list[IsolatedStack] = []

    def make(**settings: object) -> IsolatedStack:
        stack = IsolatedStack(settings={env_var(k): str(v) for k, v in settings.items()}, kafka=kafka)
        stacks.append(stack.start())
        return stack

    try:
        yield make
    finally:
        crashed = [name for stack in stacks for name in stack.crashed()]
        for stack in stacks:
            stack.stop()
    assert crashed == [], f"processes crashed during the test: {crashed}"
