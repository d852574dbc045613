"""Sealing or failing a receiving job wakes the workers holding its envelopes back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from agents.apply.seal_signals import SealListener
from app.store import jobs
from tests.integration.conftest import Stack


async def _receiving_job(db: asyncpg.Pool) -> str:
    job_id = f"seal-{uuid.uuid4()}"
    await jobs.create_receiving(db, job_id, "sensor_readings", "insert", 1, seal_within_s=60)
    return job_id


@asynccontextmanager
async def _listening(stack: Stack) -> AsyncIterator[asyncio.Event]:
    """A listener, connected (it wakes once on connecting); the event is set on each wake."""
    woken = asyncio.Event()
    listener = SealListener(stack.dsn, woken.set)
    listener.start()
    try:
        await asyncio.wait_for(woken.wait(), 30)
        woken.clear()
        yield woken
    finally:
        await listener.stop()


async def test_a_seal_and_a_failed_submission_each_wake_the_listener(
        stack: Stack, db: asyncpg.Pool) -> None:
    async with _listening(stack) as woken:
        await jobs.seal(db, await _receiving_job(db))
        await asyncio.wait_for(woken.wait(), 30)
        woken.clear()
        await jobs.fail_submission_now(db, await _receiving_job(db), "test")
        await asyncio.wait_for(woken.wait(), 30)
        woken.clear()
        # A job that is not receiving any more changes nothing and wakes nobody.
        sealed = await _receiving_job(db)
        await jobs.seal(db, sealed)
        await asyncio.wait_for(woken.wait(), 30)
        woken.clear()
        await jobs.fail_submission_now(db, sealed, "too late")
        await asyncio.sleep(0.5)
        assert not woken.is_set()


async def test_the_listener_comes_back_after_its_connection_is_killed(
        stack: Stack, db: asyncpg.Pool) -> None:
    async with _listening(stack) as woken:
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()")
        assert killed >= 1
        await asyncio.wait_for(woken.wait(), 30)  # reconnected (it wakes on connecting)
        woken.clear()
        await jobs.seal(db, await _receiving_job(db))
        await asyncio.wait_for(woken.wait(), 30)
