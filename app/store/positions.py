"""Where each records partition continues, and which worker may write it.

A partition's position is the offset of the first envelope whose outcomes are not yet
both committed and published. A worker assigned the partition continues exactly there,
whatever Kafka's own committed offsets say. It moves after the results-topic send was
acknowledged, not in the rows' transaction: a crash between the commit and the send then
reads those envelopes again, finds their outcomes in the ledger and publishes them again,
where a position committed with the rows would have lost them.

Fencing: a worker assigned a partition claims it, which bumps the partition's owner
epoch. Every write locks the position row and checks that epoch first, and so does every
move: a worker that lost the partition (and does not know yet) is refused before it
changes anything, two owners never write one partition at once, and a position never
moves back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from app.errors import SluiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """A partition as a worker takes it over."""

    partition: int
    epoch: int
    next_offset: int | None
    """None: nothing applied from this partition yet (start at its earliest offset)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """A move of a partition's position, valid only while ``epoch`` owns the partition."""

    partition: int
    epoch: int
    next_offset: int


class Fenced(SluiceError):
    """The partition was claimed by another worker since this one claimed it."""


class PartitionPositions:
    """The positions of one topic's partitions for one pipeline (consumer group)."""

    def __init__(self, group: str, topic: str) -> None:
        self._group = group
        self._topic = topic

    async def claim(self, pool: asyncpg.Pool, partitions: Iterable[int],
                    topic_id: str | None = None) -> dict[int, Claim]:
        """Take the partitions over: bump each one's epoch and read where it continues.

        ``topic_id`` names the topic's current incarnation. A position counted in another
        one (the topic was deleted and created again, or the embedded broker, whose topics
        live in memory, was restarted on a kept database) starts over at the first offset:
        kept, it would skip the new topic's records below it. None (the ID is not known)
        keeps the position as it is.
        """
        wanted = sorted(set(partitions))
        async with pool.acquire() as conn, conn.transaction():
            stale = {r["partition"]: r["topic_id"] for r in await conn.fetch(
                "SELECT partition, topic_id FROM sluice_consumer_positions WHERE consumer_group = $1"
                " AND topic = $2 AND partition = ANY($3::int[]) AND topic_id IS NOT NULL"
                " AND topic_id <> $4 AND next_offset >= 0 FOR UPDATE",
                self._group, self._topic, wanted, topic_id)} if topic_id else {}
            rows = await conn.fetch(
                """
                INSERT INTO sluice_consumer_positions AS p
                    (consumer_group, topic, partition, next_offset, owner_epoch, topic_id)
                SELECT $1, $2, part, -1, 1, $4 FROM unnest($3::int[]) AS part
                ON CONFLICT (consumer_group, topic, partition)
                DO UPDATE SET owner_epoch = p.owner_epoch + 1,
                              next_offset = CASE WHEN p.partition = ANY($5::int[]) THEN -1
                                                 ELSE p.next_offset END,
                              topic_id = coalesce($4, p.topic_id)
                RETURNING partition, owner_epoch, next_offset
                """,
                self._group, self._topic, wanted, topic_id, sorted(stale),
            )
        for partition, old in sorted(stale.items()):
            log.warning("records partition %d: the topic was created anew (id %s, was %s);"
                        " reading it from its first offset", partition, topic_id, old)
        return {r["partition"]: Claim(r["partition"], r["owner_epoch"],
                                      r["next_offset"] if r["next_offset"] >= 0 else None)
                for r in rows}

    async def hold(self, conn: asyncpg.Connection, partition: int, epoch: int) -> None:
        """In the caller's transaction, before it writes: Fenced unless ``epoch`` still owns
        the partition. The row stays locked until the transaction ends, so a new owner's
        claim waits for a write already under way instead of racing it."""
        held = await conn.fetchval(
            "SELECT true FROM sluice_consumer_positions WHERE consumer_group = $1 AND topic = $2"
            " AND partition = $3 AND owner_epoch = $4 FOR UPDATE",
            self._group, self._topic, partition, epoch,
        )
        if not held:
            raise Fenced(f"records partition {partition} was claimed by another worker"
                         f" (epoch {epoch} is stale)")

    async def advance(self, pool: asyncpg.Pool, fence: Fence) -> None:
        """Move the position forward (never back) if ``fence.epoch`` still owns the partition."""
        moved = await pool.fetchval(
            """
            UPDATE sluice_consumer_positions
            SET next_offset = GREATEST(next_offset, $5)
            WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND owner_epoch = $4
            RETURNING true
            """,
            self._group, self._topic, fence.partition, fence.epoch, fence.next_offset,
        )
        if not moved:
            raise Fenced(f"records partition {fence.partition} was claimed by another worker"
                         f" (epoch {fence.epoch} is stale)")

    async def read(self, pool: asyncpg.Pool, partitions: Iterable[int]) -> dict[int, int]:
        """Positions as committed (for tests and operators); partitions never written are absent."""
        rows = await pool.fetch(
            "SELECT partition, next_offset FROM sluice_consumer_positions"
            " WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3::int[])"
            " AND next_offset >= 0",
            self._group, self._topic, list(partitions),
        )
        return {r["partition"]: r["next_offset"] for r in rows}
