"""The one Faust application; agents, tables and services import ``app`` from here."""

from __future__ import annotations

import faust

from app.kafka import security_options
from app.settings import Settings, get_settings
from app.topics import TopicNames


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust's form of the same SASL/TLS settings every other Kafka client uses."""
    options = security_options(settings)
    protocol, context = options["security_protocol"], options.get("ssl_context")
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"], password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"], ssl_context=context,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return None


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
        store=settings.table_store,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
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
        # Envelopes are up to ~1 MB each: a short buffer bounds the worker's memory and
        # keeps one busy partition from starving the others.
        stream_buffer_maxsize=64,
    )


app = create_app()
topics = TopicNames(get_settings().topic_prefix)
