"""Producer messages become envelopes: by source partition and key partition, in runs of one operation."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord

from agents.producer_records import ProducerRecordDecoder, envelopes_for
from app.topics import TopicNames
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets

TOPICS = TopicNames("sluice")
TOPIC = TOPICS.input_for("sensor_readings")
IDS = {TOPIC: "AaInFOgSfCKQYBs"}


def _message(partition: int, offset: int, value: Any, headers: tuple[tuple[str, bytes], ...] = ()
             ) -> ConsumerRecord[bytes, bytes]:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, data, None, len(data), len(data),
                          list(headers))


def _reading(i: int) -> dict[str, Any]:
    return {"sensor_id": f"s-{i}", "value": float(i), "sampled_at": 1_700_000_000_000 + i}


def test_messages_group_into_envelopes_indexed_by_source_offset() -> None:
    decoder = ProducerRecordDecoder(load_targets(BUILTIN_TARGETS_DIR), TOPICS, 4)
    messages = [_message(0, 100 + i, _reading(i)) for i in range(50)]
    messages += [_message(1, 7, _reading(99), (("sluice-operation", b"upsert"),))]
    messages += [_message(1, 8, b"{not json")]
    envelopes = envelopes_for(messages, decoder, IDS)
    items = {(e.job_id, e.operation, item.index): (p, item) for p, e in envelopes for item in e.items}
    assert len(items) == 52
    assert {e.job_id for _, e in envelopes} == {f"{TOPIC}:0:AaInFOgSfCKQYBs", f"{TOPIC}:1:AaInFOgSfCKQYBs"}
    assert all(e.source_topic == TOPIC and e.target == "sensor_readings" for _, e in envelopes)
    # Every record of source partition 0 kept its offset as index, spread by key partition.
    assert sorted(i for (job, _, i) in items if job.startswith(f"{TOPIC}:0:")) == list(range(100, 150))
    assert len({p for (job, _, _), (p, _) in items.items() if job.startswith(f"{TOPIC}:0:")}) > 1
    upsert = items[(f"{TOPIC}:1:AaInFOgSfCKQYBs", "upsert", 7)][1]
    assert upsert.row is not None
    broken = items[(f"{TOPIC}:1:AaInFOgSfCKQYBs", "insert", 8)][1]
    assert (broken.row, broken.error_code) == (None, "malformed_record")


def test_an_operation_change_starts_a_new_envelope_so_log_order_holds() -> None:
    decoder = ProducerRecordDecoder(load_targets(BUILTIN_TARGETS_DIR), TOPICS, 4)
    key = {"sensor_id": "s-1", "sampled_at": 1_700_000_000_001}
    insert, delete = (("sluice-operation", b"insert"),), (("sluice-operation", b"delete"),)
    messages = [_message(0, 10, _reading(1), insert), _message(0, 11, key, delete),
                _message(0, 12, _reading(1), insert), _message(0, 13, _reading(1), insert)]
    envelopes = envelopes_for(messages, decoder, IDS)
    assert [(e.operation, [i.index for i in e.items]) for _, e in envelopes] == [
        ("insert", [10]), ("delete", [11]), ("insert", [12, 13])]
    assert len({p for p, _ in envelopes}) == 1  # one key, one records partition


def test_a_recreated_topic_is_a_new_stream_job() -> None:
    decoder = ProducerRecordDecoder(load_targets(BUILTIN_TARGETS_DIR), TOPICS, 4)
    message = [_message(0, 0, _reading(1))]
    (_, old), = envelopes_for(message, decoder, {TOPIC: "first"})
    (_, new), = envelopes_for(message, decoder, {TOPIC: "second"})
    assert old.items == new.items and old.job_id != new.job_id
