"""What only a real cluster can show: topics replicated three times, the idempotent web
producer, a partition leader killed mid-job, workers killed in a group of three."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import orjson
import pytest
from confluent_kafka import Producer

from app.devtools.kafka_cluster import JAR_CACHE, KafkaCluster, kafka_libs
from tests.integration.helpers import (
    assert_exactly_once,
    big_job,
    ndjson,
    reading,
    submit,
    wait_terminal,
)
from tests.integration.isolated import IsolatedStack

pytestmark = pytest.mark.slow

FAILOVER_WINDOW_S = 30.0
"""How long after a broker dies submissions may be refused with 503 (README, Running on
Apache Kafka): the leaders it held move within a few seconds; clients retry on 503."""


@pytest.fixture(scope="module")
def kafka_stack(kafka_cluster: KafkaCluster) -> Iterator[IsolatedStack]:
    """One web process and one worker on the lane's cluster, PostgreSQL and Valkey."""
    stack = IsolatedStack(kafka=kafka_cluster).start()
    try:
        stack.spawn("web")
        stack.spawn("worker")
        yield stack
        assert stack.crashed() == []
    finally:
        stack.stop()
        # A node killed by a test that failed before restarting it: the cluster is shared.
        for node in kafka_cluster.members:
            if not node.alive:
                kafka_cluster.restart(node.node_id)


@pytest.fixture
async def http(kafka_stack: IsolatedStack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(kafka_stack.base_url, headers=kafka_stack.auth_headers) as s:
        yield s


def _cluster(stack: IsolatedStack) -> KafkaCluster:
    cluster = stack.service("kafka")
    assert isinstance(cluster, KafkaCluster)
    return cluster


async def test_topics_are_replicated_three_times_with_two_in_sync_required(
        kafka_stack: IsolatedStack, http: aiohttp.ClientSession) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    done = await wait_terminal(http, (await submit(http, ndjson([reading("rf", 0)])))["job_id"])
    assert done["state"] == "completed"
    admin = AdminClient({"bootstrap.servers": _cluster(kafka_stack).bootstrap})
    topic = admin.list_topics(timeout=10).topics[kafka_stack.topics.records]
    assert {len(p.replicas) for p in topic.partitions.values()} == {3}
    resource = ConfigResource(ConfigResource.Type.TOPIC, kafka_stack.topics.records)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["min.insync.replicas"].value == "2"


async def test_a_big_job_completes_exactly_once(kafka_stack: IsolatedStack,
                                                http: aiohttp.ClientSession) -> None:
    tag = f"kafka-{uuid.uuid4().hex[:6]}"
    n = 30_000
    body, invalid = big_job(tag, n)
    accepted = await submit(http, body)
    await assert_exactly_once(http, kafka_stack.dsn, accepted["job_id"], tag, n, invalid)


async def test_the_web_producer_is_idempotent(kafka_stack: IsolatedStack,
                                             http: aiohttp.ClientSession) -> None:
    # The broker keeps a producer id (and sequence numbers) per partition for idempotent
    # producers only: the tool lists none for a producer without idempotence.
    await wait_terminal(http, (await submit(http, ndjson([reading("idem", i) for i in range(50)])))
                        ["job_id"])
    cluster = _cluster(kafka_stack)
    libs = kafka_libs(JAR_CACHE)
    producers = set()
    for partition in range(4):
        described = await asyncio.to_thread(
            subprocess.run,
            ["java", "-cp", f"{libs}/*", "org.apache.kafka.tools.TransactionsCommand",
             "--bootstrap-server", cluster.bootstrap, "describe-producers",
             "--topic", kafka_stack.topics.records, "--partition", str(partition)],
            capture_output=True, text=True, check=True, timeout=60)
        rows = [line.split() for line in described.stdout.splitlines()[1:] if line.strip()]
        producers |= {row[0] for row in rows}
    assert producers and all(int(p) >= 0 for p in producers), producers


async def test_producer_records_are_applied(kafka_stack: IsolatedStack) -> None:
    tag = f"kprod-{uuid.uuid4().hex[:6]}"
    producer = Producer({"bootstrap.servers": _cluster(kafka_stack).bootstrap, "acks": "all",
                         "enable.idempotence": True})
    n = 2_000
    for i in range(n):
        producer.produce(kafka_stack.topics.input_for("sensor_readings"), key=f"{tag}-{i}".encode(),
                         value=orjson.dumps(reading(f"{tag}-{i}", i)))
    assert producer.flush(60) == 0
    conn = await asyncpg.connect(kafka_stack.dsn)
    try:
        deadline = time.monotonic() + 120
        while await conn.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1",
                                  tag + "-%") < n:
            assert time.monotonic() < deadline, "producer records not applied"
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def _leader_of(stack: IsolatedStack, topic: str, partition: int) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": _cluster(stack).bootstrap, "log_level": 0})
    leader: int = admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader
    return leader


async def _submit_answer(http: aiohttp.ClientSession, body: bytes) -> tuple[int, dict[str, object]]:
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                         data=body, headers={"Content-Type": "application/x-ndjson"}) as r:
        return r.status, await r.json(content_type=None)


async def test_the_leader_of_a_records_partition_killed_mid_job_loses_and_doubles_nothing(
        kafka_stack: IsolatedStack, http: aiohttp.ClientSession) -> None:
    tag = f"leader-{uuid.uuid4().hex[:6]}"
    n = 60_000
    body, invalid = big_job(tag, n)
    leader = _leader_of(kafka_stack, kafka_stack.topics.records, 0)
    conn = await asyncpg.connect(kafka_stack.dsn)
    try:
        started = await conn.fetchval("SELECT now()")
        upload = asyncio.create_task(_submit_answer(http, body))
        deadline = time.monotonic() + 60
        # Mid-job: the big payload's job is recorded (it streams to Kafka as it is parsed)
        # and not finished.
        while (await conn.fetchval(
                "SELECT job_id FROM sluice_jobs WHERE created_at >= $1 AND state IN"
                " ('receiving', 'accepted', 'processing')", started)) is None:
            assert time.monotonic() < deadline and not upload.done()
            await asyncio.sleep(0.02)
        _cluster(kafka_stack).kill(leader)
    finally:
        await conn.close()
    killed_at = time.monotonic()
    # Small submissions meanwhile: each is accepted, or refused with 503 and Retry-After
    # while the partitions' leadership moves (never any other 5xx).
    refused_until = killed_at
    slowest = 0.0
    for i in range(20):
        side = ndjson([reading(f"side-{tag}-{i}", j) for j in range(10)])
        sent = time.monotonic()
        status, doc = await _submit_answer(http, side)
        slowest = max(slowest, time.monotonic() - sent)
        assert status in (202, 503), (status, doc)
        if status == 503:
            refused_until = time.monotonic()
        await asyncio.sleep(0.25)
    # Shown with `pytest -s`: the README's failover figures come from these lines.
    print(f"\nleader {leader} killed: submissions refused for {refused_until - killed_at:.1f} s;"
          f" slowest answer {slowest:.2f} s")
    assert refused_until - killed_at < FAILOVER_WINDOW_S
    status, accepted = await upload
    if status == 503:  # refused within the window: the client retries, as the 503 says
        status, accepted = await _submit_answer(http, body)
    assert status == 202, accepted
    await assert_exactly_once(http, kafka_stack.dsn, str(accepted["job_id"]), tag, n, invalid)
    await asyncio.to_thread(_cluster(kafka_stack).restart, leader)


async def test_three_workers_two_killed_the_job_completes(kafka_stack: IsolatedStack,
                                                         http: aiohttp.ClientSession) -> None:
    extra = [kafka_stack.spawn("worker", **{"SLUICE_WORKER_METRICS_PORT": "0"}) for _ in range(2)]
    await asyncio.sleep(6)  # the group takes the two new workers in
    tag = f"workers-{uuid.uuid4().hex[:6]}"
    n = 60_000
    body, invalid = big_job(tag, n)
    accepted = await submit(http, body)
    await asyncio.sleep(2)
    for worker in extra:
        kafka_stack.kill(worker)
    await assert_exactly_once(http, kafka_stack.dsn, accepted["job_id"], tag, n, invalid)


SEGMENT_BYTES = 1 << 20
"""Kafka's smallest segment size: the filler topic's log becomes many segment files."""
FILLER_MB = 64


def _fill_with_segments(bootstrap: str, topic: str, megabytes: int) -> None:
    """A topic of 1 MB segments, ``megabytes`` of it on every node (replication factor 3)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 3, 3, config={"segment.bytes": str(SEGMENT_BYTES)})]
                        )[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "compression.type": "none"})
    value = os.urandom(16 * 1024)  # random: nothing compresses it away
    for _ in range(megabytes * 64):
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0


def _messages_in(bootstrap: str, topic: str) -> int:
    """Messages the topic holds, from its partitions' offsets (asked again while the
    restarted node takes its preferred leaderships back)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4()}"})
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                return sum(high - low for low, high in (
                    consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    for p in partitions))
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    finally:
        consumer.close()


def _in_sync_everywhere(bootstrap: str, node_id: int, topics: list[str]) -> bool:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=10)
    return all(node_id in p.isrs for t in topics for p in metadata.topics[t].partitions.values())


async def test_a_broker_restarted_on_a_disk_full_of_segments_recovers_and_loses_nothing(
        kafka_stack: IsolatedStack, http: aiohttp.ClientSession) -> None:
    cluster = _cluster(kafka_stack)
    filler = f"filler-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(_fill_with_segments, cluster.bootstrap, filler, FILLER_MB)
    victim = _leader_of(kafka_stack, kafka_stack.topics.records, 1)
    node = next(n for n in cluster.members if n.node_id == victim)
    segments = len(list((node.data_dir / "log").glob(f"{filler}-*/*.log")))
    assert segments >= FILLER_MB * 0.9, segments
    tag = f"segments-{uuid.uuid4().hex[:6]}"
    n = 60_000
    body, invalid = big_job(tag, n)
    accepted = await submit(http, body)
    await asyncio.sleep(1)
    # Killed with no flush and no clean-shutdown marker: at start it must load and recover
    # its segments before it serves again, while the other two serve the job.
    cluster.kill(victim)
    await asyncio.sleep(3)
    await asyncio.to_thread(cluster.restart, victim)
    await assert_exactly_once(http, kafka_stack.dsn, accepted["job_id"], tag, n, invalid)
    deadline = time.monotonic() + 120
    topics = [kafka_stack.topics.records, filler]
    while not await asyncio.to_thread(_in_sync_everywhere, cluster.bootstrap, victim, topics):
        assert time.monotonic() < deadline, f"node {victim} not back in sync after 120 s"
        await asyncio.sleep(1)
    # Its segments came back with it: recovery may cut an unflushed tail, nothing more.
    assert len(list((node.data_dir / "log").glob(f"{filler}-*/*.log"))) >= segments
    assert await asyncio.to_thread(_messages_in, cluster.bootstrap, filler) == FILLER_MB * 64
    # The recovered node serves the job's records again: a job whose partitions it leads.
    after = await submit(http, ndjson([reading(f"{tag}-after", i) for i in range(400)]))
    assert (await wait_terminal(http, after["job_id"]))["counts"]["succeeded"] == 400
