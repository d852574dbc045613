"""The final-state tests (tests/integration/test_write_semantics.py) on Apache Kafka."""

from tests.integration.test_write_semantics import *  # noqa: F403
