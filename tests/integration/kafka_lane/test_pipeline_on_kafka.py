"""The HTTP pipeline's tests (tests/integration/test_http_pipeline.py) on Apache Kafka."""

from tests.integration.test_http_pipeline import *  # noqa: F403
