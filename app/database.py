"""PostgreSQL connection pool and schema set-up, shared by the web and worker processes."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import asyncpg

from app.store import ledger, reports, webhooks
from schemas.sql import JOBS_DDL, TENANT, quote, statements_for
from schemas.targets import Target

log = logging.getLogger(__name__)

# Keeps schema creation by several processes at once from racing (CREATE ... IF NOT
# EXISTS is not safe under concurrency in PostgreSQL).
_MIGRATION_LOCK_ID = 0x5E1C_E001


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's RESET ALL round trip on every release: Sluice sets no session state
    (no SET, LISTEN, cursors or session advisory locks), and its temporary staging
    tables are meant to outlive a checkout. An open transaction is still rolled back."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8,
                      custom_plans: bool = False) -> asyncpg.Pool:
    """Open a pool; jit off because the sink's statements are short and jit only costs.

    ``custom_plans`` plans each execution with its parameters (the sink's): a generic plan
    tests ``ord = ANY($1)`` against a 1,000-element array element by element for each of
    1,000 staged rows, a custom plan hashes the array (PostgreSQL 14+), 4x faster here.
    """
    settings = {"jit": "off"}
    if custom_plans:
        settings["plan_cache_mode"] = "force_custom_plan"
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, server_settings=settings,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


SCHEMA_VERSION = hashlib.sha256(
    "\n".join((JOBS_DDL, reports.DDL, ledger.DDL, ledger.VIEW_DDL, webhooks.DDL)).encode()
).hexdigest()[:16]
"""The bookkeeping schema's version: a digest of its DDL, so that any change to it is a new
version and applied once."""
_VERSIONS_DDL = """
CREATE TABLE IF NOT EXISTS sluice_schema_versions (
    version text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
DDL_LOCK_WAIT_MS = 5_000
"""How long a schema change waits for a table lock before it gives way and tries again."""
DDL_ATTEMPTS = 6


async def migrate(pool: asyncpg.Pool, targets: dict[str, Target], *,
                  results_retention_days: int) -> None:
    """Create Sluice's bookkeeping tables, the outcomes ledger's coming days and every
    target table that is missing (or give an older one the tenant column).

    A process starting next to running ones (a rolling restart) must not touch their
    tables: ``ALTER TABLE ... IF NOT EXISTS`` takes an exclusive lock even when it changes
    nothing, queues every reader behind it and can deadlock with a worker mid-write. So the
    DDL runs only when this version of it has not been applied yet, and then with a bounded
    lock wait, retried.
    """
    async with pool.acquire() as conn:
        if not await _schema_is_current(conn):
            await _apply_schema(conn)
        await ledger.maintain(conn, results_retention_days)
    await create_targets(pool, targets)
    log.info("schema ready", extra={"targets": sorted(targets), "version": SCHEMA_VERSION})


async def _schema_is_current(conn: asyncpg.Connection) -> bool:
    if await conn.fetchval("SELECT to_regclass('sluice_schema_versions')") is None:
        return False
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM sluice_schema_versions WHERE version = $1)", SCHEMA_VERSION))


async def _apply_schema(conn: asyncpg.Connection) -> None:
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {DDL_LOCK_WAIT_MS}")
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
                await conn.execute(_VERSIONS_DDL)
                if await _schema_is_current(conn):  # another process applied it meanwhile
                    return
                await conn.execute(JOBS_DDL)
                await conn.execute(reports.DDL)
                await conn.execute(webhooks.DDL)
                await ledger.create(conn)
                await conn.execute("INSERT INTO sluice_schema_versions (version) VALUES ($1)",
                                   SCHEMA_VERSION)
            log.info("schema applied", extra={"version": SCHEMA_VERSION})
            return
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as e:
            if attempt == DDL_ATTEMPTS:
                raise
            log.warning("schema change gave way to running work; trying again",
                        extra={"attempt": attempt, "error": type(e).__name__})
            await asyncio.sleep(0.5 * attempt)


async def create_targets(pool: asyncpg.Pool, targets: dict[str, Target]) -> None:
    """Create the target tables that are missing; add the tenant column to older ones."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
        for target in targets.values():
            sql = statements_for(target)
            await conn.execute(sql.create_table)
            # ALTER TABLE locks the table even when it changes nothing: only when needed.
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)"
                " AND attname = $2 AND NOT attisdropped)", quote(target.name), TENANT):
                await conn.execute(sql.add_tenant_column)
