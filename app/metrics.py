"""Every Prometheus collector Sluice exports, built in one place with explicit buckets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

# Seconds. HTTP submissions of large payloads take seconds; status reads take
# milliseconds: the buckets span both.
HTTP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds. One batch write of 500-2,000 rows takes 5-50 ms when PostgreSQL is healthy;
# the tail catches retries during an outage.
BATCH_SECONDS_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
# Seconds between a record reaching Kafka and its batch being written.
AGE_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

http_requests = Counter(
    "sluice_http_requests_total", "HTTP requests answered.", ["route", "status"]
)
http_seconds = Histogram(
    "sluice_http_request_seconds", "HTTP request latency.", ["route"],
    buckets=HTTP_SECONDS_BUCKETS,
)
records_received = Counter(
    "sluice_records_received_total", "Records accepted into Kafka.", ["target", "source"]
)
records_written = Counter(
    "sluice_records_processed_total", "Records with a final outcome.", ["target", "status"]
)
batch_seconds = Histogram(
    "sluice_batch_write_seconds", "One database transaction of the sink.",
    buckets=BATCH_SECONDS_BUCKETS,
)
message_age = Histogram(
    "sluice_message_age_seconds", "Age of an envelope when its batch is written.",
    buckets=AGE_SECONDS_BUCKETS,
)
write_retries = Counter(
    "sluice_write_retries_total", "Batch writes retried after a transient failure.", ["reason"]
)
early_writes = Counter(
    "sluice_early_writes_total",
    "Big jobs' envelopes written while received: committed at the seal, rolled_back (the"
    " submission failed), gave_way (to another job's write of a key), failed.",
    ["outcome"],
)
queue_depth = Gauge(
    "sluice_queue_depth_records", "Records accepted but without an outcome yet."
)
tenant_queue_depth = Gauge(
    "sluice_tenant_queue_depth_records",
    "Records accepted but without an outcome yet, per tenant (a tenant with none is absent).",
    ["tenant"],
)
stalled_jobs = Gauge(
    "sluice_stalled_jobs",
    "Unfinished jobs without progress for SLUICE_JOB_STALL_TIMEOUT_S (alert on > 0).",
)
oldest_pending_age = Gauge(
    "sluice_oldest_pending_job_seconds", "Age of the oldest accepted job not yet finished."
)
undeliverable = Counter(
    "sluice_undeliverable_envelopes_total",
    "Records-topic messages that could not be decoded (their records fail, nothing is skipped).",
)
partition_gaps = Counter(
    "sluice_partition_gaps_total",
    "Records-topic offsets missing from the log where a partition continues (retention deleted "
    "envelopes before they were applied: their jobs stall). Alert on any increase.",
)
partitions_assigned = Gauge(
    "sluice_records_partitions_assigned",
    "Records-topic partitions this worker holds (its group shares them among the workers).",
)
waiting_envelope_bytes = Gauge(
    "sluice_waiting_envelope_bytes",
    "Envelopes held in the worker until their jobs are sealed.",
)
stage_seconds = Counter(
    "sluice_stage_seconds_total",
    "Time spent in each pipeline stage; with sluice_stage_records_total it gives a rate per stage.",
    ["stage"],
)
stage_records = Counter(
    "sluice_stage_records_total", "Records that went through each pipeline stage.", ["stage"]
)
rate_limit_fallback = Counter(
    "sluice_rate_limit_fallback_total",
    "Rate-limit checks made in-process because Redis was unreachable or answered an error "
    "(out of memory, cluster, script); alert on any increase of reason=\"error\".",
    ["reason"],
)
admission_refused = Counter(
    "sluice_admission_refused_total",
    "Submissions refused before their body was read: upload slots or queued records, of the "
    "whole service or of the caller's tenant.",
    ["reason"],
)
auth_failures = Counter(
    "sluice_auth_failures_total", "Requests refused by authentication or authorisation.", ["status"]
)
# Seconds. A healthy receiver answers in tens of milliseconds; the tail reaches the
# per-request timeout (SLUICE_WEBHOOK_TIMEOUT_S, 10 s by default).
WEBHOOK_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
webhook_attempts = Counter(
    "sluice_webhook_attempts_total",
    "Webhook delivery attempts by outcome: delivered (2xx), rejected (any other status, "
    "redirects included), unreachable (no answer: DNS, connection, TLS, timeout).",
    ["outcome"],
)
webhook_attempt_seconds = Histogram(
    "sluice_webhook_attempt_seconds", "One webhook delivery attempt, connection to answer.",
    buckets=WEBHOOK_SECONDS_BUCKETS,
)
webhook_given_up = Counter(
    "sluice_webhook_deliveries_failed_total",
    "Webhook deliveries given up: no 2xx within SLUICE_WEBHOOK_MAX_AGE_S (alert on increase).",
)
webhook_pending = Gauge(
    "sluice_webhook_deliveries_pending",
    "Webhook deliveries queued and not yet delivered nor given up (all workers' together).",
)
event_watchers = Gauge(
    "sluice_event_watchers", "Open job event streams (WebSocket, Server-Sent Events, gRPC Watch)."
)
event_watchers_dropped = Counter(
    "sluice_event_watchers_dropped_total",
    "Job event streams closed because their client fell too far behind.",
)


class StageTimer:
    """Set ``records`` inside the block when the count is only known there."""

    __slots__ = ("records",)

    def __init__(self, records: int) -> None:
        self.records = records


@contextmanager
def timed_stage(stage: str, records: int = 0) -> Iterator[StageTimer]:
    """Count the time spent (and records handled) in one stage of the pipeline."""
    timer = StageTimer(records)
    started = time.perf_counter()
    try:
        yield timer
    finally:
        stage_seconds.labels(stage).inc(time.perf_counter() - started)
        if timer.records:
            stage_records.labels(stage).inc(timer.records)
