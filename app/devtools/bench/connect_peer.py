"""The peer on the producer path: Kafka Connect with the Debezium JDBC sink connector.

It drains the same schemaless JSON records Sluice's producers write (produced the same
way, into a topic of its own on the same brokers) into the same PostgreSQL table, timed
the same way: from the first send until the last row is in the table. Connect runs in
standalone mode with the jars of ``deploy/kafka-connect/pom.xml``; the connector upserts
on the target's key, the setting that gives its at-least-once delivery the same final
table as Sluice's exactly-once effects.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import asyncpg
from confluent_kafka import Consumer, TopicPartition

from app.devtools.bench.client import TARGET, BenchError
from app.devtools.bench.scenarios import produce_readings
from app.devtools.embedded import free_port, stop_processes
from app.devtools.kafka_cluster import log4j2_file_config, maven_libs
from app.kafka import ensure_topics
from schemas.targets import ColumnType, Target

_ROOT = Path(__file__).resolve().parents[3]
CONNECT_POM = _ROOT / "deploy" / "kafka-connect" / "pom.xml"
CONNECT_JARS = _ROOT / ".data" / "kafka-connect-jars"
CONNECTOR = "sluice-bench-peer"
START_TIMEOUT_S = 120.0
POLL_S = 0.2

_CONNECT_TYPES: dict[ColumnType, dict[str, Any]] = {
    ColumnType.STRING: {"type": "string"},
    ColumnType.INT: {"type": "int32"},
    ColumnType.LONG: {"type": "int64"},
    ColumnType.FLOAT: {"type": "float"},
    ColumnType.DOUBLE: {"type": "double"},
    ColumnType.BOOLEAN: {"type": "boolean"},
    ColumnType.TIMESTAMP_MILLIS: {"type": "int64", "name": "org.apache.kafka.connect.data.Timestamp",
                                  "version": 1},
    ColumnType.DATE: {"type": "int32", "name": "org.apache.kafka.connect.data.Date", "version": 1},
}

def connect_schema(target: Target) -> dict[str, Any]:
    """The target's record as a Kafka Connect struct schema (JsonConverter's format), for
    ``schema.content``: the connector learns the columns without a schema in each message."""
    fields = []
    for column in target.columns:
        if column.type not in _CONNECT_TYPES:
            raise BenchError(f"the Connect peer cannot map column {column.name} ({column.type})")
        fields.append({"field": column.name, "optional": column.nullable, **_CONNECT_TYPES[column.type]})
    return {"type": "struct", "name": target.name, "optional": False, "fields": fields}


def jdbc_url(dsn: str) -> str:
    """A JDBC URL for a libpq-style DSN; a unix-socket DSN (``?host=/dir``, as the embedded
    PostgreSQL gives) goes through junixsocket to the same socket."""
    parts = urlsplit(dsn)
    database = parts.path.lstrip("/") or "postgres"
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir and socket_dir.startswith("/"):
        port = parts.port or 5432
        socket = f"{socket_dir}/.s.PGSQL.{port}"
        return (f"jdbc:postgresql://localhost/{database}?socketFactory="
                f"org.newsclub.net.unix.AFUNIXSocketFactory$FactoryArg&socketFactoryArg={quote(socket)}")
    return f"jdbc:postgresql://{parts.hostname}:{parts.port or 5432}/{database}"


def _properties(values: dict[str, str]) -> str:
    # Java properties: a backslash, and nothing else used here, needs escaping.
    return "".join(f"{k}={v.replace(chr(92), chr(92) * 2)}\n" for k, v in values.items())


@dataclass
class ConnectPeer:
    """One standalone Connect worker running the Debezium JDBC sink on one topic."""

    work_dir: Path
    bootstrap: str
    dsn: str
    topic: str
    target: Target
    tasks: int
    batch_size: int
    process: subprocess.Popen[bytes] | None = None
    rest_port: int = 0

    def start(self) -> None:
        """Write the worker and connector files and start the JVM (not yet waiting)."""
        libs = maven_libs(CONNECT_POM, CONNECT_JARS, what="Kafka Connect")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.rest_port = free_port()
        parts = urlsplit(self.dsn)
        worker = {
            "bootstrap.servers": self.bootstrap,
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            "offset.storage.file.filename": str(self.work_dir / "offsets"),
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "true",
            "value.converter.schema.content": json.dumps(connect_schema(self.target)),
            # As many records per poll as Sluice writes per batch.
            "consumer.max.poll.records": str(self.batch_size),
            "plugin.discovery": "only_scan",
            # How often a sink task's flushed offsets are committed: the run's end is seen
            # through them.
            "offset.flush.interval.ms": "500",
        }
        connector = {
            "name": CONNECTOR,
            "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "tasks.max": str(self.tasks),
            "topics": self.topic,
            "connection.url": jdbc_url(self.dsn),
            "connection.username": parts.username or "postgres",
            "connection.password": parts.password or "",
            "insert.mode": "upsert",
            "primary.key.mode": "record_value",
            "primary.key.fields": ",".join(self.target.key),
            "collection.name.format": self.target.name,
            "schema.evolution": "none",
            "batch.size": str(self.batch_size),
            "use.time.zone": "UTC",
        }
        (self.work_dir / "worker.properties").write_text(_properties(worker))
        (self.work_dir / "connector.properties").write_text(_properties(connector))
        (self.work_dir / "log4j2.properties").write_text(
            log4j2_file_config(self.work_dir / "connect.log"))
        with open(self.work_dir / "connect.out", "ab") as out:
            self.process = subprocess.Popen(
                ["java", "-Xmx1g", f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                 "-cp", f"{libs}/*", "org.apache.kafka.connect.cli.ConnectStandalone",
                 str(self.work_dir / "worker.properties"), str(self.work_dir / "connector.properties")],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_running(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the connector and each of its tasks report RUNNING (a FAILED task's trace
        is raised)."""
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{CONNECTOR}/status"
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise BenchError(f"Kafka Connect exited ({self.process.returncode}): "
                                     f"see {self.work_dir / 'connect.log'}")
                status = await _status(http, url)
                if status is not None:
                    tasks = status.get("tasks", [])
                    failed = [t for t in tasks if t.get("state") == "FAILED"]
                    if failed:
                        raise BenchError(f"the Connect task failed: {failed[0].get('trace', '')[:2000]}")
                    if (status["connector"]["state"] == "RUNNING" and len(tasks) == self.tasks
                            and all(t["state"] == "RUNNING" for t in tasks)):
                        return
                if time.monotonic() > deadline:
                    raise BenchError(f"Kafka Connect not running after {timeout_s:.0f} s: {status}")
                await asyncio.sleep(POLL_S)

    async def failed_task(self) -> str | None:
        """The trace of a failed task, if one failed (the drain then never ends)."""
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{CONNECTOR}/status"
        async with aiohttp.ClientSession() as http:
            status = await _status(http, url)
        for task in (status or {}).get("tasks", []):
            if task.get("state") == "FAILED":
                return str(task.get("trace", ""))[:2000]
        return None

    def stop(self) -> None:
        """Stop the worker (TERM, then KILL)."""
        if self.process is not None:
            stop_processes([self.process])
            self.process = None


async def _status(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return await response.json() if response.status == 200 else None
    except (TimeoutError, aiohttp.ClientError):
        return None


@dataclass(frozen=True, slots=True)
class PeerFigures:
    """The producer-path drain by Kafka Connect, timed as Sluice's producer run is."""

    records: int
    produce_s: float
    total_s: float
    tasks: int
    batch_size: int

    @property
    def records_per_s(self) -> float:
        """Records per second from the first send to the last row in the table."""
        return self.records / self.total_s

    def as_doc(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {"label": "Kafka Connect + Debezium JDBC sink", **asdict(self),
                "records_per_s": self.records_per_s}


async def connect_peer_run(work_dir: Path, bootstrap: str, dsn: str, target: Target, tag: str,
                           records: int, partitions: int, batch_size: int,
                           timeout_s: float = 900) -> PeerFigures:
    """Start Connect on a fresh topic, produce ``records`` readings tagged ``tag`` into it as
    Sluice's producer run does, and wait until every one is a row of the target."""
    topic = f"{tag}.connect-peer"
    await ensure_topics(bootstrap, [topic], partitions)
    peer = ConnectPeer(work_dir, bootstrap, dsn, topic, target, tasks=partitions, batch_size=batch_size)
    # One reader of the connector group's offsets for the whole wait, not one per look.
    offsets = Consumer({"bootstrap.servers": bootstrap, "group.id": f"connect-{CONNECTOR}",
                        "enable.auto.commit": False})
    try:
        peer.start()
        await peer.wait_running()
        started = time.perf_counter()
        await asyncio.to_thread(produce_readings, bootstrap, topic, tag, records)
        produced = time.perf_counter() - started
        deadline = time.monotonic() + timeout_s
        while await asyncio.to_thread(_lag, offsets, topic) > 0:
            if (trace := await peer.failed_task()) is not None:
                raise BenchError(f"the Connect task failed: {trace}")
            if time.monotonic() > deadline:
                raise BenchError(f"Kafka Connect had not written every record after {timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)
        total = time.perf_counter() - started
        if (written := await _rows_of(dsn, tag)) != records:
            raise BenchError(f"Kafka Connect committed every offset but wrote {written:,} rows "
                             f"of {records:,}")
        return PeerFigures(records, produced, total, partitions, batch_size)
    finally:
        peer.stop()
        offsets.close()


def _lag(offsets: Consumer, topic: str) -> int:
    """Records of the topic past the connector's committed offsets. A sink task's offsets
    are committed only for records it has flushed (written and committed to PostgreSQL),
    every ``offset.flush.interval.ms``; counting rows instead would scan the table."""
    partitions = offsets.list_topics(topic, timeout=10).topics[topic].partitions
    committed = offsets.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    return sum(offsets.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0)
               for tp in committed)


async def _rows_of(dsn: str, tag: str) -> int:
    """Rows of the target written for readings tagged ``tag`` (their sensor ids start with it)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            f"SELECT count(*) FROM {TARGET} WHERE sensor_id LIKE $1",
            tag.replace("_", r"\_").replace("%", r"\%") + "-%"))
    finally:
        await conn.close()
