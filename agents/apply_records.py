"""apply_record_envelopes: the batching agent that writes record envelopes into PostgreSQL.

Offsets are acknowledged only after the transaction holding a batch has committed and
its outcomes are on the results topic; a crash in between redelivers the envelopes,
and the sink's ledger turns the second delivery into a re-publication, not a re-write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict

import asyncpg
import faust

from agents.batching import chunk_by_records, result_messages
from agents.resources import resources
from agents.streams import unacked_batches
from app import metrics
from app.faust_app import app, topics
from app.settings import get_settings
from app.sink import BatchResult, JobNotSealed
from schemas.envelope import Envelope, EnvelopeError
from tables.record_hashes import now, remember_applied, was_applied_recently

log = logging.getLogger(__name__)
settings = get_settings()

records_topic = app.topic(
    topics.records, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
)
results_topic = app.topic(
    topics.results, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
)

# Envelopes hold up to batch_size records each; a take gathers several so that small
# envelopes (small jobs, producer trickles) still make full-size transactions.
MAX_ENVELOPES_PER_TAKE = 32

_TRANSIENT = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
              asyncpg.CannotConnectNowError, asyncpg.PostgresError, asyncio.TimeoutError)


async def write_until_committed(envelopes: list[Envelope]) -> BatchResult:
    """Write one chunk, retrying transient failures with bounded exponential backoff.

    Nothing is skipped: a database outage stalls the partition, it does not drop it.
    """
    delay = 0.1
    while True:
        started = time.perf_counter()
        current = now()

        def seen_recently(digest: bytes, at: float = current) -> bool:
            return was_applied_recently(digest, at)

        try:
            result = await resources.sink.write(envelopes, seen_recently)
            metrics.batch_seconds.observe(time.perf_counter() - started)
            return result
        except JobNotSealed as e:
            metrics.write_retries.labels("job_receiving").inc()
            log.debug("job %s still receiving; batch waits", e)
            await asyncio.sleep(0.2)
        except _TRANSIENT as e:
            metrics.write_retries.labels(type(e).__name__).inc()
            log.warning("batch write failed (%s); retrying in %.1fs", type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.db_retry_max_s)


@app.agent(records_topic)
async def apply_record_envelopes(stream: faust.StreamT[bytes]) -> None:
    """Decode envelopes, write them in batches, publish outcomes, then acknowledge."""
    await resources.wait_ready()
    codec = resources.codec
    async for events in unacked_batches(
        stream, MAX_ENVELOPES_PER_TAKE, settings.flush_interval_s
    ):
        decoded: list[tuple[faust.EventT[bytes], Envelope]] = []
        for event in events:
            try:
                decoded.append((event, codec.decode(event.value)))
            except (EnvelopeError, KeyError) as e:
                log.error("skipping undecodable envelope at %s[%s]@%s: %s",
                          event.message.topic, event.message.partition,
                          event.message.offset, e)
        event_of = {id(envelope): event for event, envelope in decoded}
        for event, _ in decoded:
            metrics.message_age.observe(max(0.0, time.time() - event.message.timestamp / 1000))
        for chunk in chunk_by_records([e for _, e in decoded], settings.batch_size):
            result = await write_until_committed(chunk)
            by_envelope: dict[int, list[bytes]] = defaultdict(list)
            for envelope, digest in result.applied_hashes:
                by_envelope[id(envelope)].append(digest)
            stamp = now()
            for envelope_id, digests in by_envelope.items():
                message = event_of[envelope_id].message
                remember_applied(message.partition, message.offset, digests, stamp)
            sent = [
                await results_topic.send(key=job_id.encode(), value=value)
                for job_id, value in result_messages(result, chunk)
            ]
            await asyncio.gather(*sent)
            tally = Counter(o.status for o in result.outcomes)
            for status, count in tally.items():
                metrics.records_written.labels(chunk[0].target, status).inc(count)
        for event in events:
            await stream.ack(event)
