"""Apache Kafka for development and tests: KRaft nodes started with the machine's JDK.

The broker's jars come from Maven Central through ``deploy/kafka/pom.xml`` (fetched once,
kept under the data folder, fetched again only when that file changes). Each node is a
combined broker and controller with a static quorum, its storage formatted on first
start; no Docker, no root, nothing downloaded outside the package registries.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import SluiceError

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]
POM = _ROOT / "deploy" / "kafka" / "pom.xml"
JAR_CACHE = _ROOT / ".data" / "kafka-jars"
"""Where the jars are kept: one fetch serves `sluice run` and every test session."""
CLUSTER_ID = "c2x1aWNlLWRldi1rYWZrYQ"
"""Any 22-character base64 id will do; one fixed id lets a node's storage be reused."""
NODE_HEAP = "-Xmx512m"
START_TIMEOUT_S = 90.0

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{ISO8601}} %p %c{{1}} %m%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
"""


def log4j2_file_config(log: Path, *info_loggers: str) -> str:
    """A log4j2 configuration for a JVM of ours: warnings and up into ``log``, and the
    info lines of ``info_loggers`` (Kafka's own: start-up, recovery, leadership)."""
    extra = "".join(f"logger.l{n}.name = {name}\nlogger.l{n}.level = info\n"
                    for n, name in enumerate(info_loggers))
    return _LOG4J2.format(log=log) + extra


class KafkaUnavailable(SluiceError):
    """No JDK or Maven on this machine, or the jars could not be fetched."""


def missing_tools() -> str | None:
    """Why Apache Kafka cannot run here (no ``java`` or ``mvn`` on the PATH), or None."""
    absent = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    return f"{' and '.join(absent)} not found on the PATH" if absent else None


def maven_libs(pom: Path, cache_dir: Path, what: str) -> Path:
    """The folder of the jars ``pom`` lists, fetched with Maven unless already there for
    this very pom (a changed file fetches again)."""
    if (reason := missing_tools()) is not None:
        raise KafkaUnavailable(f"{what} needs a JDK and Maven: {reason}")
    libs = cache_dir / "libs"
    stamp = cache_dir / "pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if libs.is_dir() and stamp.is_file() and stamp.read_text() == digest:
        return libs
    shutil.rmtree(libs, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("fetching jars with Maven", extra={"pom": str(pom)})
    fetched = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}"], capture_output=True, text=True, check=False)
    if fetched.returncode != 0:
        raise KafkaUnavailable(f"mvn could not fetch the jars of {what}: {fetched.stdout[-2000:]}"
                               f"{fetched.stderr[-2000:]}")
    stamp.write_text(digest)
    return libs


def kafka_libs(cache_dir: Path) -> Path:
    """The folder of Kafka's jars."""
    return maven_libs(POM, cache_dir, "Apache Kafka")


@dataclass
class KafkaNode:
    """One KRaft node (broker and controller in one JVM)."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class KafkaCluster:
    """``nodes`` KRaft nodes on 127.0.0.1; replication settings follow the node count (one
    node: 1 and 1; three or more: 3 and 2, as production runs)."""

    data_dir: Path
    nodes: int = 1
    cache_dir: Path = JAR_CACHE
    members: list[KafkaNode] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.members)

    @property
    def replication_factor(self) -> int:
        return 3 if self.nodes >= 3 else 1

    @property
    def min_insync_replicas(self) -> int:
        return 2 if self.nodes >= 3 else 1

    def start(self) -> None:
        """Fetch the jars if needed, format each node's storage once, start every node and
        wait until all of them serve as brokers."""
        from app.devtools.embedded import free_port

        libs = kafka_libs(self.cache_dir)
        if not self.members:
            self.members = [KafkaNode(n + 1, free_port(), free_port(), self.data_dir / f"node-{n + 1}")
                            for n in range(self.nodes)]
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.members)
        for node in self.members:
            self._prepare(node, libs, voters)
        for node in self.members:
            self._launch(node, libs)
        self.wait_ready()

    def _properties(self, node: KafkaNode, voters: str) -> str:
        replicas, min_isr = self.replication_factor, self.min_insync_replicas
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={node.data_dir / 'log'}",
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={replicas}",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={min_isr}",
            "auto.create.topics.enable=false",
            "group.initial.rebalance.delay.ms=0",
            # Sluice's envelopes are up to about 1 MB (app/kafka.py MAX_REQUEST_BYTES).
            "message.max.bytes=8388608",
            "replica.fetch.max.bytes=8388608",
            "",
        ])

    def _prepare(self, node: KafkaNode, libs: Path, voters: str) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        config = node.data_dir / "server.properties"
        config.write_text(self._properties(node, voters))
        (node.data_dir / "log4j2.properties").write_text(
            log4j2_file_config(node.data_dir / "server.log", "kafka"))
        if (node.data_dir / "log" / "meta.properties").exists():
            return  # formatted by an earlier start of the same node: keep its data
        formatted = subprocess.run(
            [*self._java(node, libs), "kafka.tools.StorageTool", "format", "-t", CLUSTER_ID,
             "-c", str(config), "--ignore-formatted"],
            capture_output=True, text=True, check=False)
        if formatted.returncode != 0:
            raise KafkaUnavailable(f"formatting node {node.node_id} failed: {formatted.stdout}"
                                   f"{formatted.stderr}")

    @staticmethod
    def _java(node: KafkaNode, libs: Path) -> list[str]:
        return ["java", NODE_HEAP, f"-Dlog4j2.configurationFile={node.data_dir / 'log4j2.properties'}",
                "-cp", f"{libs}/*"]

    def _launch(self, node: KafkaNode, libs: Path) -> None:
        with open(node.data_dir / "stdout.log", "ab") as out:
            node.process = subprocess.Popen(
                [*self._java(node, libs), "kafka.Kafka", str(node.data_dir / "server.properties")],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every live node is a broker the cluster's metadata lists."""
        from confluent_kafka.admin import AdminClient

        live = {n.node_id for n in self.members if n.alive}
        deadline = time.monotonic() + timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while True:
            dead = [n.node_id for n in self.members if n.process is not None and not n.alive]
            if dead and live & set(dead):
                raise KafkaUnavailable(f"Kafka node(s) {dead} exited while starting; see "
                                       f"{self.data_dir}/node-*/stdout.log")
            try:
                brokers = set(admin.list_topics(timeout=2).brokers)
            except Exception:  # noqa: BLE001 - not answering yet
                brokers = set()
            if live <= brokers:
                return
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"Kafka brokers {sorted(live - brokers)} not up after "
                                       f"{timeout_s:g} s")
            time.sleep(0.5)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (its data stays: it can be started again)."""
        node = self._node(node_id)
        if node.alive:
            assert node.process is not None
            node.process.kill()
            node.process.wait()

    def restart(self, node_id: int) -> None:
        """Start a stopped or killed node again on its data and ports."""
        node = self._node(node_id)
        libs = kafka_libs(self.cache_dir)
        self._launch(node, libs)
        self.wait_ready()

    def _node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.members if n.node_id == node_id)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 20 s)."""
        running = [n.process for n in self.members if n.alive and n.process is not None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def discard(self) -> None:
        """Kill every node at once (a test's cluster, whose data goes next)."""
        for node in self.members:
            if node.alive and node.process is not None:
                node.process.kill()
                node.process.wait()
