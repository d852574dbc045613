"""The worker's long-lived resources (pool, sink, codec, metrics endpoint) as one Faust service."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import faust
from prometheus_client import start_http_server

from app.database import create_pool, create_targets, migrate
from app.faust_app import app
from app.settings import get_settings
from app.store.positions import PartitionPositions
from app.store.sink import PostgresSink
from app.topics import TopicNames
from schemas.envelope import EnvelopeCodec
from schemas.targets import Target, TargetSchemaError, load_targets

log = logging.getLogger(__name__)
TARGETS_REREAD_S = 2.0


class WorkerResources(faust.Service):
    """Opens the database pool before agents start and closes it after they stop."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        settings = get_settings()
        self.targets: dict[str, Target] = load_targets(settings.targets_dir)
        self.codec = EnvelopeCodec(self.targets)
        self._pool: asyncpg.Pool | None = None
        self._sink: PostgresSink | None = None
        self._ready = asyncio.Event()
        self._targets_read_at = 0.0

    @property
    def ready(self) -> bool:
        """True once the pool and sink exist."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Agents may start before app services do: they wait here for the pool."""
        await self._ready.wait()

    @property
    def sink(self) -> PostgresSink:
        """The database sink; only valid once the service has started."""
        assert self._sink is not None, "WorkerResources not started"
        return self._sink

    async def on_start(self) -> None:
        """Connect, create missing tables, expose metrics."""
        settings = get_settings()
        _, dsn, _ = settings.require_services()
        # Per partition, one connection for its writes and one for an early write; plus
        # claims, reports and upkeep.
        self._pool = await create_pool(dsn, max_size=2 * settings.partitions + 2, custom_plans=True)
        await migrate(self._pool, self.targets, results_retention_days=settings.results_retention)
        records = TopicNames(settings.topic_prefix).records
        self._sink = PostgresSink(
            self._pool, self.targets,
            positions=PartitionPositions(settings.worker_id, records), topic=records,
        )
        self._ready.set()
        if settings.worker_metrics_port:
            try:
                start_http_server(settings.worker_metrics_port, addr=settings.http_host)
            except OSError as e:
                # Metrics are worth a warning, not a worker: a second worker on one host
                # simply has none unless given its own port.
                log.warning("worker metrics not served on port %d: %s",
                            settings.worker_metrics_port, e)
        log.info("worker resources ready")

    @property
    def pool(self) -> asyncpg.Pool:
        """The database pool; only valid once the service has started."""
        assert self._pool is not None, "WorkerResources not started"
        return self._pool

    async def reload_targets(self) -> bool:
        """Re-read the target files (at most every few seconds); True if a new target appeared.

        A rolling deploy can add a target to the web processes before this worker
        restarts: a new file in the targets folder is picked up without a restart.
        """
        if time.monotonic() - self._targets_read_at < TARGETS_REREAD_S:
            return False
        self._targets_read_at = time.monotonic()
        try:
            fresh = load_targets(get_settings().targets_dir)
        except TargetSchemaError as e:
            log.warning("target files not re-read: %s", e)
            return False
        new = {name: t for name, t in fresh.items() if name not in self.targets}
        if not new:
            return False
        await create_targets(self.pool, new)
        self.targets.update(new)
        self.codec.add_targets(new)
        self.sink.add_targets(new)
        log.info("new targets", extra={"targets": sorted(new)})
        return True

    async def on_stop(self) -> None:
        """Close the pool once the agents no longer need it."""
        if self._pool is not None:
            await self._pool.close()


resources = WorkerResources()
app.service(resources)  # type: ignore[arg-type]  # faust accepts instances too
