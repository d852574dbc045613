"""Kafka plumbing shared by the web process and the CLI: topic creation and the producer."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

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


MIN_INSYNC_REPLICAS = "min.insync.replicas"


def topic_specs(topics: list[str], settings: Settings) -> list[NewTopic]:
    """How Sluice's topics are created: partitions, replicas, and the in-sync replicas an
    acks=all write needs (a topic setting, so it holds whatever the broker default is)."""
    return [
        NewTopic(topic, num_partitions=settings.partitions,
                 replication_factor=settings.topic_replication_factor,
                 topic_configs={MIN_INSYNC_REPLICAS: str(settings.topic_min_insync_replicas)})
        for topic in topics
    ]


def topic_creation_failures(topic_errors: Iterable[tuple[Any, ...]]) -> dict[str, str]:
    """Topic -> error from a CreateTopics answer, which reports errors instead of raising them.

    Entries are (topic, error_code[, error_message]): version 0 of the answer has no message.
    Already-exists is not a failure: another process created it between our list and create.
    """
    failures: dict[str, str] = {}
    for topic, code, *rest in topic_errors:
        message = rest[0] if rest else None
        error = for_code(code)
        if code != 0 and error is not TopicAlreadyExistsError:
            failures[topic] = f"{error.__name__}: {message or error.description}"
    return failures


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    """Create missing topics as ``topic_specs`` says; existing ones are left as they are.

    A topic the cluster refuses (say three replicas on fewer brokers) stops the caller:
    running on without it would lose every record sent to it.
    """
    settings = get_settings().model_copy(update={"partitions": partitions})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            response = await admin.create_topics(topic_specs(missing, settings))
            failures = topic_creation_failures(response.topic_errors)
            if failures:
                log.error("topics not created", extra={"failures": failures})
                raise SystemExit(f"could not create topics: {failures}")
            log.info("created topics", extra={
                "topics": missing, "replication_factor": settings.topic_replication_factor,
                "min_insync_replicas": settings.topic_min_insync_replicas})
    finally:
        await admin.close()


def create_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer that waits for every replica (acks=all): 202 means durably in Kafka; a
    retried send is not written twice where the broker offers idempotence."""
    settings = get_settings()
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=5,
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=30_000,
        **security_options(settings),
    )
