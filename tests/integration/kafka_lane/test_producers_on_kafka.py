"""The producer input topics' tests (tests/integration/test_kafka_producers.py) on Apache
Kafka. The test of a topic's operation grant starts a stack of its own on the embedded
broker: a policy test, not a broker one, it runs in the embedded lane only."""

from tests.integration.test_kafka_producers import (  # noqa: F401
    test_an_undecodable_producer_record_is_reported_not_lost,
    test_producer_records_reach_postgresql_and_the_result_topic,
)
