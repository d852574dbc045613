"""Topic IDs: what tells a deleted and recreated topic from the one it replaced.

A producer topic's records are identified by (topic, partition, offset) in the ledger;
after the topic is deleted and created again, its offsets start over, so the name alone
would make new records look like old ones. Kafka gives every topic incarnation a UUID
(KIP-516); aiokafka does not expose it, librdkafka (confluent-kafka) does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from app.settings import Settings


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """The same connection settings as app.kafka.security_options, in librdkafka's words."""
    assert settings.kafka_bootstrap is not None
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap,
                              "security.protocol": settings.kafka_security_protocol}
    if settings.kafka_ssl_cafile is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL_"):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    return config


class TopicIds:
    """Looks up the current ID of topics (one metadata request per call)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka.admin import AdminClient

        config = librdkafka_config(settings)
        config["logger"] = _QUIET
        self._admin = AdminClient(config)

    async def of(self, topics: Iterable[str]) -> dict[str, str]:
        """{topic: id} of the topics that exist."""
        from confluent_kafka import KafkaException, TopicCollection

        names = sorted(set(topics))
        if not names:
            return {}
        futures = self._admin.describe_topics(TopicCollection(names), request_timeout=10)
        ids: dict[str, str] = {}
        for name, future in futures.items():
            try:
                description = await asyncio.wrap_future(future)
            except KafkaException:
                continue  # deleted (or not created yet): no records of it to name
            ids[name] = str(description.topic_id)
        return ids


_QUIET = logging.getLogger("sluice.librdkafka")
_QUIET.setLevel(logging.CRITICAL)
"""librdkafka reports every dropped idle connection at error level; Sluice logs what matters."""
