"""The worker's Kafka topics as Faust topic objects, declared once for every agent and service."""

from __future__ import annotations

from app.faust_app import app, topics
from app.settings import get_settings

_partitions = get_settings().partitions

records_topic = app.topic(
    topics.records, key_serializer="raw", value_serializer="raw", partitions=_partitions)
"""Record envelopes, written by the web ingress and the producer-record forwarder."""
results_topic = app.topic(
    topics.results, key_serializer="raw", value_serializer="raw", partitions=_partitions)
"""Per-record outcomes and job snapshots, written by the apply loop."""
job_reports_topic = app.topic(
    topics.job_reports, key_serializer="raw", value_serializer="raw", partitions=_partitions)
"""One report per finished job, written by the report publisher."""
