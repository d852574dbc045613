"""Audit lines of forwarded input records: counts per topic, operation and asserted principal."""

from __future__ import annotations

import logging

import pytest

from agents.input_audit import (
    MAX_PRINCIPAL_CHARS,
    MAX_PRINCIPALS_PER_STREAM,
    OTHER_PRINCIPALS,
    InputTally,
    asserted_principal,
    write_audit,
)
from app.input_policy import OPERATION_NOT_ALLOWED
from schemas.envelope import Item

TOPIC = "sluice.input.sensor_readings"
OK = Item(1, ("s", 1.0, None))
REFUSED = Item(2, None, OPERATION_NOT_ALLOWED, "no")
BROKEN = Item(3, None, "malformed_record", "no")


def test_the_principal_header_is_read_as_printable_text_or_not_at_all() -> None:
    assert asserted_principal(None) is None
    assert asserted_principal([("content-type", b"application/json")]) is None
    assert asserted_principal([("Sluice-Principal", b" meter-gateway ")]) == "meter-gateway"
    assert asserted_principal([("sluice-principal", b"a\nb\x00c")]) == "a?b?c"
    assert asserted_principal([("sluice-principal", b"\xff")]) == "\ufffd"
    assert asserted_principal([("sluice-principal", b"")]) is None
    assert asserted_principal([("sluice-principal", None)]) is None
    assert len(asserted_principal([("sluice-principal", b"x" * 10_000)]) or "") == MAX_PRINCIPAL_CHARS


def test_the_tally_counts_refused_and_invalid_records_per_operation_and_principal() -> None:
    tally = InputTally()
    for item in (OK, OK, BROKEN):
        tally.count(TOPIC, "sensor_readings", "insert", "gw", item)
    tally.count(TOPIC, "sensor_readings", "delete", None, REFUSED)
    assert tally.lines() == [
        {"audit": True, "topic": TOPIC, "target": "sensor_readings", "operation": "delete",
         "records": 1, "refused": 1, "invalid": 0, "asserted_principal": None,
         "principal_authenticated": False},
        {"audit": True, "topic": TOPIC, "target": "sensor_readings", "operation": "insert",
         "records": 3, "refused": 0, "invalid": 1, "asserted_principal": "gw",
         "principal_authenticated": False},
    ]


def test_a_flood_of_claimed_principals_makes_a_bounded_number_of_lines() -> None:
    tally = InputTally()
    for i in range(1000):
        tally.count(TOPIC, "sensor_readings", "insert", f"p{i}", OK)
    lines = tally.lines()
    assert len(lines) == MAX_PRINCIPALS_PER_STREAM + 1
    other = [x for x in lines if x["asserted_principal"] == OTHER_PRINCIPALS]
    assert other[0]["records"] == 1000 - MAX_PRINCIPALS_PER_STREAM
    assert sum(x["records"] for x in lines) == 1000


def test_audit_lines_go_to_the_audit_logger(caplog: pytest.LogCaptureFixture) -> None:
    tally = InputTally()
    tally.count(TOPIC, "sensor_readings", "upsert", "gw", REFUSED)
    with caplog.at_level(logging.INFO, logger="sluice.audit"):
        write_audit(tally)
    (record,) = caplog.records
    assert record.name == "sluice.audit" and record.__dict__["refused"] == 1
    assert record.__dict__["principal_authenticated"] is False
