"""The delivery guarantees (tests/integration/test_guarantees.py) whose mechanism rests on
the broker, on Apache Kafka: consumer groups and their offsets, fencing after a rebalance,
redelivery, recreated input topics. The guarantees that rest on PostgreSQL, Valkey or the
web process (outages, upload limits, leases, the web killed mid-upload) run in the
embedded lane only: the broker has no part in what they prove, and the suite's time is
bounded (15 minutes on 2 cores).
"""

from collections.abc import Callable

import aiohttp

from tests.integration.isolated import IsolatedStack, MakeStack
from tests.integration.test_guarantees import (  # noqa: F401
    kafka_offsets_ahead_of_the_database_skip_nothing,
    session_for,
    test_a_frozen_worker_that_lost_its_partitions_writes_nothing_twice,
    test_a_recreated_producer_topic_is_applied_not_taken_for_the_old_one,
    test_a_redelivered_envelope_is_not_applied_twice,
    test_abort_skips_what_is_not_written_and_keeps_what_is,
    test_opposite_order_upserts_of_the_same_rows_both_complete,
    worker_killed_and_restarted_at_once,
)


async def test_worker_killed_three_times_and_restarted_at_once_completes_exactly_once(
    isolated: MakeStack,
    session_for: Callable[[IsolatedStack], aiohttp.ClientSession],  # noqa: F811 - the fixture
) -> None:
    stack = isolated()
    await worker_killed_and_restarted_at_once(stack, session_for(stack), kills=3)


async def test_kafka_offsets_ahead_of_the_database_skip_nothing(
    isolated: MakeStack,
    session_for: Callable[[IsolatedStack], aiohttp.ClientSession],  # noqa: F811 - the fixture
) -> None:
    await kafka_offsets_ahead_of_the_database_skip_nothing(isolated, session_for)
