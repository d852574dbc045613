"""The record as received, kept with a failed outcome: cut to 4 KiB on a character boundary,
and a worker-side failure's record re-serialised from its columns."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.received import (
    RECORD_TEXT_BYTES,
    RecordText,
    json_text,
    record_text,
    row_text,
)
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_target, load_targets

SENSORS = load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"]
SAMPLED = datetime(2023, 10, 1, 12, 0, tzinfo=UTC)


def test_the_limit_is_4_kib() -> None:
    assert RECORD_TEXT_BYTES == 4096


# --- cutting ---------------------------------------------------------------------------


def test_a_short_record_is_kept_whole() -> None:
    assert record_text(b'{"a":1}') == RecordText('{"a":1}', False)
    assert record_text("s-1,2.5,x") == RecordText("s-1,2.5,x", False)


def test_a_record_of_exactly_the_limit_is_not_cut() -> None:
    text = "x" * RECORD_TEXT_BYTES
    assert record_text(text) == RecordText(text, False)
    assert record_text(text.encode()) == RecordText(text, False)


def test_one_byte_over_the_limit_is_cut_and_flagged() -> None:
    assert record_text("x" * (RECORD_TEXT_BYTES + 1)) == RecordText("x" * RECORD_TEXT_BYTES, True)


@pytest.mark.parametrize("char", ["é", "€", "😀"])  # 2, 3 and 4 bytes of UTF-8
@pytest.mark.parametrize("lead", range(4))
def test_a_cut_never_splits_a_character(char: str, lead: int) -> None:
    text = "a" * lead + char * RECORD_TEXT_BYTES
    for raw in (text, text.encode()):
        cut = record_text(raw)
        assert cut.truncated
        data = cut.text.encode()
        assert len(data) <= RECORD_TEXT_BYTES
        assert len(data) > RECORD_TEXT_BYTES - len(char.encode())
        assert text.startswith(cut.text)


@given(st.text(max_size=3 * RECORD_TEXT_BYTES))
def test_the_cut_is_the_longest_prefix_that_fits(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    if "\r" in text or "\n" in text or "\x00" in text or any(
            0xD800 <= ord(c) <= 0xDFFF for c in text):
        return  # line ends, NUL and lone surrogates have their own tests
    cut = record_text(data)
    assert cut == record_text(text)
    assert cut.truncated == (len(data) > RECORD_TEXT_BYTES)
    assert text.startswith(cut.text)
    kept = len(cut.text.encode())
    assert kept <= RECORD_TEXT_BYTES
    if cut.truncated:  # one more character would not fit
        assert kept + len(text[len(cut.text)].encode()) > RECORD_TEXT_BYTES


def test_bytes_that_are_not_utf_8_become_replacement_characters_within_the_limit() -> None:
    assert record_text(b'{"a":"\xff"}') == RecordText('{"a":"\ufffd"}', False)
    cut = record_text(b"\xff" * RECORD_TEXT_BYTES)  # each byte becomes 3 bytes of U+FFFD
    assert cut.truncated
    assert len(cut.text.encode()) <= RECORD_TEXT_BYTES
    assert set(cut.text) == {"\ufffd"}


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r"])
def test_the_line_end_is_not_part_of_the_record(ending: bytes) -> None:
    assert record_text(b"a,b" + ending) == RecordText("a,b", False)
    assert record_text(("a" * RECORD_TEXT_BYTES).encode() + ending) == RecordText(
        "a" * RECORD_TEXT_BYTES, False)


def test_a_line_break_inside_a_record_is_kept() -> None:
    assert record_text('"multi\nline",1\n') == RecordText('"multi\nline",1', False)


# --- JSON elements ---------------------------------------------------------------------


def test_a_decoded_json_value_is_re_serialised_compactly() -> None:
    value = {"sensor_id": "s-1", "value": "bad", "sampled_at": 1_696_161_600_000, "x": [1.5, None]}
    cut = json_text(value)
    assert cut == RecordText(orjson.dumps(value).decode(), False)
    assert orjson.loads(cut.text) == value


def test_json_values_orjson_cannot_write_are_still_written() -> None:
    assert json_text({"n": 2**70}) == RecordText('{"n":1180591620717411303424}', False)
    assert json_text({"s": "\ud800"}) == RecordText('{"s":"\\ud800"}', False)


def test_a_partial_json_value_is_always_flagged_cut() -> None:
    assert json_text({"a": 1}, partial=True) == RecordText('{"a":1}', True)


def test_a_long_json_value_is_cut() -> None:
    cut = json_text({"s": "x" * 10_000})
    assert cut.truncated and len(cut.text.encode()) == RECORD_TEXT_BYTES
    assert cut.text.startswith('{"s":"xxx')


# --- worker-side failures: the converted row ------------------------------------------


def test_a_row_is_its_columns_as_a_json_object_with_rfc_3339_timestamps() -> None:
    cut = row_text(SENSORS, ("s-1", 1.5, SAMPLED), "insert")
    assert cut == RecordText('{"sensor_id":"s-1","value":1.5,"sampled_at":"2023-10-01T12:00:00Z"}',
                             False)


def test_a_row_timestamp_keeps_its_fraction() -> None:
    """Converted rows hold UTC-aware timestamps (schemas.validation): they are written with Z."""
    cut = row_text(SENSORS, ("s-1", -0.5, SAMPLED.replace(microsecond=123000)), "upsert")
    assert orjson.loads(cut.text)["sampled_at"] == "2023-10-01T12:00:00.123000Z"


def test_a_delete_row_is_its_key_alone() -> None:
    cut = row_text(SENSORS, ("s-1", None, SAMPLED), "delete")
    assert cut == RecordText('{"sensor_id":"s-1","sampled_at":"2023-10-01T12:00:00Z"}', False)


def test_a_resubmitted_row_text_reads_back_as_the_same_row() -> None:
    from schemas.validation import RecordConverter

    row = ("s-1", 1.5, SAMPLED)
    assert RecordConverter(SENSORS).from_json(orjson.loads(row_text(SENSORS, row, "insert").text)) == row


def test_a_long_row_is_cut() -> None:
    cut = row_text(SENSORS, ("s" * 10_000, 1.0, SAMPLED), "insert")
    assert cut.truncated and len(cut.text.encode()) == RECORD_TEXT_BYTES


def test_dates_nulls_and_micros(tmp_path: Path) -> None:
    schema = {"type": "record", "name": "events", "sluice.key": ["id"], "fields": [
        {"name": "id", "type": "long"},
        {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "ok", "type": "boolean"}]}
    path = tmp_path / "events.avsc"
    path.write_bytes(orjson.dumps(schema))
    target: Target = load_target(path)
    at = datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=UTC)
    assert row_text(target, (7, date(2024, 2, 29), at, True), "insert").text == (
        '{"id":7,"day":"2024-02-29","at":"2024-02-29T00:00:00.000001Z","ok":true}')
    assert row_text(target, (7, None, at, False), "insert").text == (
        '{"id":7,"day":null,"at":"2024-02-29T00:00:00.000001Z","ok":false}')


@pytest.mark.parametrize("raw", [b'{"a": "x\x00y"}', "a,b\x00c", b"\x00" * 5000, "\x00" * 5000])
def test_no_record_text_holds_a_nul_which_postgresql_text_cannot(raw: bytes | str) -> None:
    """A NUL once reached the ledger's COPY and stopped the worker: the record's whole write
    failed, again at every retry."""
    text = record_text(raw)
    assert "\x00" not in text.text
    assert len(text.text.encode()) <= RECORD_TEXT_BYTES
    assert text.truncated == (len(raw) * 3 > RECORD_TEXT_BYTES)
