"""Pure helpers of the batching agent: how envelopes group into writes, how outcomes are published."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson

from app.sink import BatchResult, Outcome
from schemas.envelope import Envelope


def chunk_by_records(envelopes: Sequence[Envelope], limit: int) -> list[list[Envelope]]:
    """Group whole envelopes into chunks of at most ``limit`` records (one envelope may exceed it)."""
    chunks: list[list[Envelope]] = []
    current: list[Envelope] = []
    size = 0
    for envelope in envelopes:
        if current and size + len(envelope.items) > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(envelope)
        size += len(envelope.items)
    if current:
        chunks.append(current)
    return chunks


def outcome_document(outcome: Outcome, *, from_kafka: bool) -> dict[str, Any]:
    """One record's outcome as analysts read it; a producer record's index is its offset."""
    doc: dict[str, Any] = {
        "index": outcome.index,
        "status": outcome.status,
        "key": orjson.Fragment(outcome.key) if outcome.key else None,
        "code": outcome.code,
        "message": outcome.message,
    }
    if from_kafka:
        doc["offset"] = outcome.index
    return doc


def result_messages(
    result: BatchResult, envelopes: Sequence[Envelope]
) -> list[tuple[str, bytes]]:
    """One results-topic message per job in the batch: its outcomes and job snapshot."""
    sources = {e.job_id: (e.target, e.operation, e.source_topic, e.source_partition)
               for e in envelopes}
    by_job: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in (*result.replayed, *result.outcomes):
        by_job[outcome.job_id].append(outcome)
    messages = []
    for job_id, outcomes in by_job.items():
        target, operation, source_topic, source_partition = sources[job_id]
        outcomes.sort(key=lambda o: o.index)
        doc: dict[str, Any] = {
            "job_id": job_id,
            "target": target,
            "operation": operation,
            "source": None
            if source_topic is None
            else {"topic": source_topic, "partition": source_partition},
            "outcomes": [outcome_document(o, from_kafka=source_topic is not None)
                         for o in outcomes],
            "job": result.jobs.get(job_id),
        }
        messages.append((job_id, orjson.dumps(doc, default=str)))
    return messages
