"""Producer messages become envelopes: by source partition and key partition, in runs of one
operation, and only of the operations their topic accepts."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord

from agents.input_audit import InputTally
from agents.producer_records import ProducerRecordDecoder, envelopes_for
from app.input_policy import OPERATION_NOT_ALLOWED, InputOperations
from app.topics import TopicNames
from schemas.received import RecordText
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from schemas.vocabulary import Operation

TOPICS = TopicNames("sluice")
TOPIC = TOPICS.input_for("sensor_readings")
IDS = {TOPIC: "AaInFOgSfCKQYBs"}
EVERY_OPERATION = InputOperations({"*": frozenset(Operation)})
UPSERT, DELETE = (("sluice-operation", b"upsert"),), (("sluice-operation", b"delete"),)


def _decoder(operations: InputOperations = EVERY_OPERATION) -> ProducerRecordDecoder:
    return ProducerRecordDecoder(load_targets(BUILTIN_TARGETS_DIR), TOPICS, 4, operations=operations)


def _message(partition: int, offset: int, value: Any, headers: tuple[tuple[str, bytes], ...] = ()
             ) -> ConsumerRecord[bytes, bytes]:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, None, data, None, len(data), len(data),
                          list(headers))


def _reading(i: int) -> dict[str, Any]:
    return {"sensor_id": f"s-{i}", "value": float(i), "sampled_at": 1_700_000_000_000 + i}


def test_messages_group_into_envelopes_indexed_by_source_offset() -> None:
    decoder = _decoder()
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
    decoder = _decoder()
    key = {"sensor_id": "s-1", "sampled_at": 1_700_000_000_001}
    insert, delete = (("sluice-operation", b"insert"),), (("sluice-operation", b"delete"),)
    messages = [_message(0, 10, _reading(1), insert), _message(0, 11, key, delete),
                _message(0, 12, _reading(1), insert), _message(0, 13, _reading(1), insert)]
    envelopes = envelopes_for(messages, decoder, IDS)
    assert [(e.operation, [i.index for i in e.items]) for _, e in envelopes] == [
        ("insert", [10]), ("delete", [11]), ("insert", [12, 13])]
    assert len({p for p, _ in envelopes}) == 1  # one key, one records partition


def test_a_recreated_topic_is_a_new_stream_job() -> None:
    decoder = _decoder()
    message = [_message(0, 0, _reading(1))]
    (_, old), = envelopes_for(message, decoder, {TOPIC: "first"})
    (_, new), = envelopes_for(message, decoder, {TOPIC: "second"})
    assert old.items == new.items and old.job_id != new.job_id


def test_by_default_an_upsert_or_delete_fails_under_its_own_operation_and_order_holds() -> None:
    key = {"sensor_id": "s-1", "sampled_at": 1_700_000_000_001}
    messages = [_message(0, 10, _reading(1)), _message(0, 11, _reading(1), UPSERT),
                _message(0, 12, key, DELETE), _message(0, 13, _reading(2))]
    envelopes = envelopes_for(messages, _decoder(InputOperations()), IDS)
    outcomes = sorted((i.index, e.operation, i.error_code) for _, e in envelopes for i in e.items)
    assert outcomes == [(10, "insert", None), (11, "upsert", OPERATION_NOT_ALLOWED),
                        (12, "delete", OPERATION_NOT_ALLOWED), (13, "insert", None)]
    # Envelopes stay in log order: the inserts around the refused records come in order.
    assert [i.index for _, e in envelopes if e.operation == "insert" for i in e.items] == [10, 13]
    refused = next(e.items[0] for _, e in envelopes if e.operation == "upsert")
    assert refused.row is None
    assert refused.error_message is not None and "accepts insert" in refused.error_message


def test_a_topic_granted_upserts_applies_them_and_still_refuses_deletes() -> None:
    policy = InputOperations({"sensor_readings": frozenset({Operation.INSERT, Operation.UPSERT})})
    key = {"sensor_id": "s-1", "sampled_at": 1_700_000_000_001}
    envelopes = envelopes_for([_message(0, 1, _reading(1), UPSERT), _message(0, 2, key, DELETE)],
                              _decoder(policy), IDS)
    (_, upserts), (_, deletes) = envelopes
    assert upserts.items[0].row is not None and upserts.items[0].error_code is None
    assert deletes.items[0].error_code == OPERATION_NOT_ALLOWED


def test_a_closed_topic_refuses_even_inserts() -> None:
    closed = InputOperations({"sensor_readings": frozenset()})
    ((_, envelope),) = envelopes_for([_message(0, 1, _reading(1))], _decoder(closed), IDS)
    (item,) = envelope.items
    assert item.error_code == OPERATION_NOT_ALLOWED
    assert item.error_message is not None and "accepts nothing" in item.error_message


def test_the_tally_sees_every_record_with_its_asserted_principal() -> None:
    claimed = (("sluice-principal", b"meter-gateway"),)
    messages = [_message(0, 1, _reading(1), claimed), _message(0, 2, _reading(2), UPSERT + claimed),
                _message(1, 3, b"{not json"), _message(1, 4, _reading(4), (("sluice-operation", b"merge"),))]
    tally = InputTally()
    envelopes_for(messages, _decoder(InputOperations()), IDS, tally)
    counts = {(x["operation"], x["asserted_principal"]): (x["records"], x["refused"], x["invalid"])
              for x in tally.lines()}
    assert counts == {("insert", "meter-gateway"): (1, 0, 0), ("upsert", "meter-gateway"): (1, 1, 0),
                      ("insert", None): (2, 0, 2)}


def test_failed_producer_records_carry_their_message_as_received() -> None:
    """JSON: the message value; Avro: its decoded value as JSON; an Avro value that does not
    decode has no text to show. Valid records carry nothing."""
    import io

    import fastavro

    decoder = ProducerRecordDecoder(load_targets(BUILTIN_TARGETS_DIR), TOPICS, 4,
                                    operations=InputOperations())  # inserts only
    avro = io.BytesIO()
    fastavro.schemaless_writer(avro, fastavro.parse_schema(
        load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"].avro_schema),
        {"sensor_id": "", "value": 1.0, "sampled_at": 5})
    avro_type = (("content-type", b"application/avro"),)
    wrong = orjson.dumps({**_reading(3), "value": "high"})
    messages = [_message(0, 1, _reading(1)),
                _message(0, 2, b"{not json\r\n"),
                _message(0, 3, wrong),
                _message(0, 4, _reading(4), UPSERT),  # not an operation this topic accepts
                _message(0, 5, b"\x01\x02", avro_type),
                _message(0, 6, avro.getvalue(), (*avro_type, *UPSERT))]
    received = {index: text for _, e in envelopes_for(messages, decoder, IDS)
                for index, text in e.received.items()}
    assert received == {2: RecordText("{not json"), 3: RecordText(wrong.decode()),
                        4: RecordText(orjson.dumps(_reading(4)).decode()),
                        6: RecordText('{"sensor_id":"","value":1.0,"sampled_at":5}')}
