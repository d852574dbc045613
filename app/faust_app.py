"""The one Faust application: the worker's services and its producer import ``app`` from here."""

from __future__ import annotations

import faust

from app.kafka import broker_credentials
from app.settings import get_settings
from app.topics import TopicNames


def create_app() -> faust.App:
    """Build the Faust app from settings (Kafka must be configured)."""
    settings = get_settings()
    kafka, _, _ = settings.require_services()
    datadir = settings.data_dir / "worker" / settings.worker_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    brokers = [f"kafka://{hostport.strip()}" for hostport in kafka.split(",")]
    return faust.App(
        settings.worker_id,
        broker=brokers,
        broker_credentials=broker_credentials(settings),
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,
        # Faust's own web server is off: the worker exposes /metrics on its own port.
        web_enabled=False,
        # A new group join costs 3-5 s on the embedded broker; short timeouts keep
        # rebalances after a worker death near the low end of that range.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=5.0,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.005,
        # Sluice creates every topic itself (app.kafka.ensure_topics: partitions, replicas,
        # min.insync.replicas), Faust's leader topic included (LEADER_TOPIC), so Faust
        # declares none. On real Kafka its declaring, redone on every rebalance, asked the
        # first broker it knew for the controller: with that broker dead, the worker died
        # of NodeNotReadyError.
        topic_allow_declare=False,
    )


def leader_topic(worker_id: str) -> str:
    """Faust's leader-election topic (one partition), which it no longer creates itself."""
    return f"{worker_id}-__assignor-__leader"


app = create_app()
topics = TopicNames(get_settings().topic_prefix)
