"""The bench's runs on Apache Kafka: a KRaft cluster (3 nodes: replication factor 3,
min.insync.replicas 2, acks=all, as production runs), and beside Sluice's producer path
the peer that drains the same kind of records into the same table, Kafka Connect with the
Debezium JDBC sink."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from app.devtools.bench import scenarios
from app.devtools.bench.connect_peer import connect_peer_run
from app.devtools.bench.processes import BenchServices
from app.devtools.bench.workload import ndjson
from app.devtools.kafka_cluster import missing_tools
from app.settings import get_settings
from schemas.targets import load_targets

Say = Callable[[str], None]


async def kafka_runs(args: argparse.Namespace, tag: str, say: Say) -> dict[str, Any]:
    """One payload, concurrent payloads, Sluice's producer path and the Connect peer on a
    fresh cluster with PostgreSQL and Valkey of its own; ``skipped`` when Kafka cannot run."""
    if (reason := missing_tools()) is not None:
        say(f"Apache Kafka cannot run here ({reason}): its figures and the Kafka Connect peer "
            "are not measured")
        return {"skipped": reason}
    settings = get_settings()
    services = BenchServices(settings, broker="kafka", kafka_nodes=args.kafka_nodes)
    say(f"starting Apache Kafka ({args.kafka_nodes} nodes), PostgreSQL and Valkey")
    services.start()
    figures: dict[str, Any] = {"nodes": args.kafka_nodes}
    try:
        pipeline = services.pipeline("kafka")
        await scenarios.warm_up(pipeline, f"{tag}-kwarm", settings.partitions)
        n = args.records
        say(f"on Kafka: one payload of {n:,} records")
        figures["single"] = (await scenarios.http_run(
            pipeline, [(ndjson(f"{tag}-kone", 0, n), n)])).as_doc(f"1 x {n:,} NDJSON")
        if args.payloads > 1:
            each = n // args.payloads
            say(f"on Kafka: {args.payloads} concurrent payloads of {each:,} records")
            bodies = [(ndjson(f"{tag}-kc{k}", 0, each), each) for k in range(args.payloads)]
            figures["concurrent"] = (await scenarios.http_run(pipeline, bodies)).as_doc(
                f"{args.payloads} x {each:,} concurrently")
            del bodies
        if args.peer_records > 0:
            m = args.peer_records
            say(f"on Kafka: {m:,} records straight to Sluice's input topic")
            sluice = await scenarios.producer_run(pipeline, services.kafka, services.dsn,
                                                  f"{tag}-kp", m)
            figures["producers"] = sluice.as_doc()
            pipeline.stop()  # the peer runs alone, as Sluice did
            say(f"on Kafka: the same {m:,} records through Kafka Connect and the Debezium JDBC sink")
            target = load_targets(settings.targets_dir)["sensor_readings"]
            peer = await connect_peer_run(services.data / "connect", services.kafka, services.dsn,
                                          target, f"{tag}-kk", m, settings.partitions,
                                          settings.batch_size)
            figures["connect"] = peer.as_doc()
            figures["producers_over_connect"] = sluice.records_per_s / peer.records_per_s
        return figures
    finally:
        services.stop()
