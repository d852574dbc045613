"""The Kafka lane: the pipeline, write-semantics, producer and guarantee tests again, on a
3-node Apache Kafka cluster (replication factor 3, min.insync.replicas 2, acks=all) instead
of the embedded broker.

Its modules import the tests of the embedded lane; the fixtures below give them the same
stack on the cluster, so that one test body proves one promise on both brokers. Stacks of
their own (``isolated``) share the cluster under topic prefixes of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest

from app.devtools.embedded import EmbeddedStack
from app.devtools.kafka_cluster import KafkaCluster
from tests.integration.conftest import (
    Stack,
    db_pool,
    http_session,
    on_cluster,
    running_stack,
    stack_folder,
)
from tests.integration.isolated import MakeStack, isolated_stacks


@pytest.fixture(scope="session")
def stack(kafka_cluster: KafkaCluster) -> Iterator[Stack]:
    data = stack_folder()
    embedded = EmbeddedStack(data_dir=data, kafka_bootstrap=kafka_cluster.bootstrap)
    with running_stack(data, embedded, **on_cluster(kafka_cluster)) as running:
        yield running


# Redefined, not inherited: a session fixture is made once, so the embedded lane's `http`
# and `db` would hand these tests clients of the embedded stack.
@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session(stack) as session:
        yield session


@pytest.fixture(scope="session")
async def db(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    async with db_pool(stack) as pool:
        yield pool


@pytest.fixture
def isolated(kafka_cluster: KafkaCluster) -> Iterator[MakeStack]:
    """Stacks of their own, as the embedded lane's ``isolated`` makes them, on the cluster."""
    with isolated_stacks(kafka_cluster) as make:
        yield make
