"""Pure helpers of the apply loop: how envelopes group into writes, how outcomes are published."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson

from app.store.sink import BatchResult
from schemas.envelope import MAX_ENVELOPE_BYTES, Envelope
from schemas.outcomes import STATUS_OF, OutcomeBlock


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


def outcome_documents(block: OutcomeBlock, *, from_kafka: bool) -> list[dict[str, Any]]:
    """A block's outcomes as analysts read them; a producer record's index is its offset.

    A failed record's document also has ``record``, the record as received, and
    ``record_truncated`` when it was cut, as the results listing gives them: absent
    members, not nulls, so that the many other outcomes cost nothing more.
    """
    docs: list[dict[str, Any]] = []
    append = docs.append
    codes, messages, records, cut = block.codes, block.messages, block.records, block.records_truncated
    fragment = orjson.Fragment
    for n, (index, letter, key) in enumerate(zip(block.indexes, block.statuses, block.keys,
                                                 strict=True)):
        doc: dict[str, Any] = {
            "index": index,
            "status": STATUS_OF[letter],
            "key": fragment(key) if key else None,
            "code": codes[n] if codes is not None else None,
            "message": messages[n] if messages is not None else None,
        }
        if from_kafka:
            doc["offset"] = index
        if records is not None and records[n] is not None:
            doc["record"] = records[n]
            if cut is not None and cut[n]:
                doc["record_truncated"] = True
        append(doc)
    return docs


JOB_HEADER = "sluice-job"
"""Results-message header carrying the job snapshot alone, so that the report agent
need not parse a thousand outcomes to learn a job's counts."""


def job_header(result: BatchResult, job_id: str) -> dict[str, bytes] | None:
    """The header carrying a job's snapshot after this batch, if the batch moved its counts."""
    snapshot = result.jobs.get(job_id)
    return None if snapshot is None else {JOB_HEADER: orjson.dumps(snapshot, default=str)}


def result_messages(
    result: BatchResult, envelopes: Sequence[Envelope], max_bytes: int = MAX_ENVELOPE_BYTES
) -> list[tuple[str, bytes]]:
    """Results-topic messages per job in the batch: its outcomes and job snapshot.

    A job's outcomes are split over several messages, each with the snapshot, when long
    keys would otherwise push one past the broker's message size limit.
    """
    sources = {e.job_id: (e.target, e.operation, e.source_topic, e.source_partition)
               for e in envelopes}
    by_job: dict[str, list[OutcomeBlock]] = defaultdict(list)
    for block in (*result.replayed, *result.blocks):
        by_job[block.job_id].append(block)
    for job_id, snapshot in result.jobs.items():
        if job_id not in by_job:  # counts moved without outcomes: an undeliverable message
            by_job[job_id] = []
            sources.setdefault(job_id, (str(snapshot.get("target")), str(snapshot.get("operation")),
                                        None, None))
    messages: list[tuple[str, bytes]] = []
    for job_id, blocks in by_job.items():
        target, operation, source_topic, source_partition = sources[job_id]
        from_kafka = source_topic is not None
        head = {
            "job_id": job_id,
            "target": target,
            "operation": operation,
            "source": {"topic": source_topic, "partition": source_partition} if from_kafka else None,
        }
        tail = {"job": result.jobs.get(job_id)}
        documents = [doc for block in blocks for doc in outcome_documents(block, from_kafka=from_kafka)]
        if len(blocks) > 1:
            documents.sort(key=_by_index)
        messages.extend((job_id, data) for data in _encode_bounded(head, documents, tail, max_bytes))
    return messages


def _by_index(document: dict[str, Any]) -> int:
    index: int = document["index"]
    return index


def _encode_bounded(
    head: dict[str, Any], documents: list[dict[str, Any]], tail: dict[str, Any], max_bytes: int
) -> list[bytes]:
    """Encode head, outcomes and tail, halving the outcomes until each part fits
    (a single outcome is left whole)."""
    data = orjson.dumps({**head, "outcomes": documents, **tail}, default=str)
    if len(data) <= max_bytes or len(documents) < 2:
        return [data]
    half = len(documents) // 2
    return [*_encode_bounded(head, documents[:half], tail, max_bytes),
            *_encode_bounded(head, documents[half:], tail, max_bytes)]
