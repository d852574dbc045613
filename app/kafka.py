"""Kafka plumbing shared by the web process and the CLI: topic creation and the producer."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.settings import Settings, get_settings
from app.topics import TopicNames

log = logging.getLogger(__name__)

# An envelope holds up to 2,000 records; with long string fields it can pass the
# default 1 MB request size.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


GROUP_TIMEOUTS: dict[str, int] = {
    "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "rebalance_timeout_ms": 5000}
"""Consumer-group timeouts of the worker's plain consumers: a new group join costs 3-5 s
on the embedded broker, and short timeouts keep a rebalance after a death near that."""


def security_options(settings: Settings) -> dict[str, Any]:
    """aiokafka client arguments for SASL and/or TLS, from settings; every client uses them.

    PLAINTEXT (the embedded broker) gives only ``security_protocol``. With SSL or SASL_SSL
    the broker certificate is verified against ``kafka_ssl_cafile`` (or the system CAs).
    """
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        context = ssl.create_default_context(cafile=cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise SystemExit("SLUICE_KAFKA_SECURITY_PROTOCOL=" + protocol + " needs "
                             "SLUICE_KAFKA_SASL_USERNAME and SLUICE_KAFKA_SASL_PASSWORD")
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
        )
    return options


def broker_credentials(settings: Settings) -> Any:
    """Faust's form of the same settings (``broker_credentials``), or None for PLAINTEXT."""
    import faust  # only workers need it; the web process does not pay for the import

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


def all_topics(names: TopicNames, targets: list[str]) -> list[str]:
    """Every topic Sluice owns."""
    return [names.records, names.results, names.job_reports,
            *(names.input_for(t) for t in targets)]


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    """Create missing topics; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security_options(get_settings()))
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
        **security_options(get_settings()),
    )
