"""Kafka plumbing shared by the web process and the CLI: topic creation and the producer."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.topics import TopicNames

log = logging.getLogger(__name__)

# An envelope holds up to 2,000 records; with long string fields it can pass the
# default 1 MB request size.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


def all_topics(names: TopicNames, targets: list[str]) -> list[str]:
    """Every topic Sluice owns (Faust creates its changelog topics itself)."""
    return [names.records, names.results, names.job_reports,
            *(names.input_for(t) for t in targets)]


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    """Create missing topics; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another process created them between our list and create
            log.info("created topics %s", missing)
    finally:
        await admin.close()


def create_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer that waits for every replica (acks=all): 202 means durably in Kafka."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=30_000,
    )
