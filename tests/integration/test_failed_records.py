"""Failures you can fix and resend: a failed result line carries the record as it was received
(at most 4 KiB of it, cut on a character boundary and flagged), so the failed lines of a job
are a file to correct and submit again. Each test has its own keys on the shared stack."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import orjson

from tests.integration.helpers import BASE_MS, ndjson, reading, results, submit, wait_terminal

LIMIT = 4096


def _cut(text: str) -> str:
    """The first 4096 bytes of ``text``'s UTF-8, less a character the cut would split."""
    return text.encode()[:LIMIT].decode("utf-8", "ignore")


def _by_index(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {line["index"]: line for line in lines}


async def _run(http: aiohttp.ClientSession, body: bytes, content_type: str = "application/x-ndjson",
               operation: str = "insert") -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    accepted = await submit(http, body, operation=operation, headers={"Content-Type": content_type})
    job = await wait_terminal(http, accepted["job_id"])
    return job, _by_index(await results(http, accepted["job_id"]))


async def test_each_failed_ndjson_line_carries_its_record_and_succeeded_lines_none(
        http: aiohttp.ClientSession) -> None:
    tag = f"frec-{uuid.uuid4().hex[:8]}"
    seed = await submit(http, ndjson([reading(tag, 0, 1.0)]))
    assert (await wait_terminal(http, seed["job_id"]))["state"] == "completed"
    malformed = '{"sensor_id": "' + tag + '", "value":'
    wrong_type = orjson.dumps({"sensor_id": tag, "value": "high", "sampled_at": BASE_MS + 2}).decode()
    big = orjson.dumps({"sensor_id": tag, "value": "é" * 3000, "sampled_at": BASE_MS + 3}).decode()
    lines = [
        orjson.dumps(reading(tag, 1)).decode(),
        malformed,
        wrong_type,
        big,
        orjson.dumps(reading(tag, 0, 2.0)).decode(),  # the seed's key, another value: 23505
        orjson.dumps(reading(tag, 5)).decode(),
    ]
    job, outcome = await _run(http, "\n".join(lines).encode() + b"\n")
    assert job["counts"] == {"received": 6, "succeeded": 2, "failed": 4, "duplicates": 0,
                             "aborted": 0}
    for index in (0, 5):
        assert outcome[index]["status"] == "succeeded"
        assert "record" not in outcome[index] and "record_truncated" not in outcome[index]
    assert outcome[1]["code"] == "malformed_record"
    assert outcome[1]["record"] == malformed
    assert outcome[2]["record"] == wrong_type
    assert "record_truncated" not in outcome[2]
    assert len(big.encode()) > LIMIT
    assert outcome[3]["record"] == _cut(big) and outcome[3]["record_truncated"] is True
    assert len(outcome[3]["record"].encode()) in (LIMIT - 1, LIMIT)
    # Found by the database, the record is the values the worker had: a JSON object of the
    # target's columns, timestamps in RFC 3339.
    assert outcome[4]["code"] == "23505"
    record = orjson.loads(outcome[4]["record"])
    assert list(record) == ["sensor_id", "value", "sampled_at"]
    assert record["sensor_id"] == tag and record["value"] == 2.0
    assert datetime.fromisoformat(record["sampled_at"]) == datetime.fromtimestamp(BASE_MS / 1000, UTC)
    assert "record_truncated" not in outcome[4]
    # Only failed lines, when asked for them.
    failed = await results(http, job["job_id"], "failed")
    assert [line["index"] for line in failed] == [1, 2, 3, 4]
    assert all("record" in line for line in failed)


async def test_a_failed_csv_row_carries_its_csv_text(http: aiohttp.ClientSession) -> None:
    tag = f"fcsv-{uuid.uuid4().hex[:8]}"
    rows = [f"{tag},1.5,2023-10-01T12:00:00Z",
            f"{tag},1.5",                              # a field short
            f'"{tag}, two",high,2023-10-01T12:00:01Z',  # a value of the wrong type
            f"{tag},2.5,2023-10-01T12:00:02Z"]
    body = ("sensor_id,value,sampled_at\r\n" + "".join(row + "\r\n" for row in rows)).encode()
    job, outcome = await _run(http, body, "text/csv")
    assert job["counts"]["failed"] == 2 and job["counts"]["succeeded"] == 2
    assert (outcome[1]["code"], outcome[1]["record"]) == ("malformed_record", rows[1])
    assert (outcome[2]["code"], outcome[2]["record"]) == ("wrong_type", rows[2])
    assert "record" not in outcome[0] and "record" not in outcome[3]


async def test_a_failed_record_with_a_nul_is_kept_and_the_worker_goes_on(
    http: aiohttp.ClientSession,
) -> None:
    """PostgreSQL text holds no NUL: a record text with one stopped the worker at the
    ledger's COPY, at every retry. Its NULs are kept as U+FFFD."""
    tag = f"fnul-{uuid.uuid4().hex[:8]}"
    body = b'not json \x00 at all\n{"sensor_id": "' + tag.encode() + b'", "value": "a\x00b"}\n'
    for media_type in ("application/x-ndjson", "text/csv"):
        if media_type == "text/csv":
            body = b"sensor_id,value,sampled_at\n" + tag.encode() + b",x\x00y,2023-10-01T12:00:00Z\n"
        job, outcome = await _run(http, body, media_type)
        assert job["counts"]["failed"] == len(outcome) >= 1
        assert all("\x00" not in line["record"] and "\ufffd" in line["record"]
                   for line in outcome.values())


async def test_a_row_refused_by_a_table_rule_carries_its_columns(
        http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    tag = f"fchk-{uuid.uuid4().hex[:8]}"
    await db.execute(f"ALTER TABLE sensor_readings ADD CONSTRAINT no_{tag.replace('-', '_')}"
                     f" CHECK (sensor_id <> '{tag}-poison')")
    job, outcome = await _run(http, ndjson([reading(tag, 0), reading(f"{tag}-poison", 1, 7.5)]),
                              operation="upsert")
    assert outcome[1]["code"] == "23514"
    assert orjson.loads(outcome[1]["record"]) == {
        "sensor_id": f"{tag}-poison", "value": 7.5, "sampled_at": "2023-10-01T12:00:00.001000Z"}
    assert "record" not in outcome[0]


async def test_failed_records_fixed_and_sent_again_complete(
        http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    tag = f"fround-{uuid.uuid4().hex[:8]}"
    seed = await submit(http, ndjson([reading(tag, 0, 1.0)]))
    await wait_terminal(http, seed["job_id"])
    records = [reading(tag, 1), {**reading(tag, 2), "value": "high"},
               {**reading(tag, 3), "value": "high"}, reading(tag, 0, 2.0)]
    first, _ = await _run(http, ndjson(records))
    assert first["state"] == "completed_with_errors"
    failed = await results(http, first["job_id"], "failed")
    assert [line["index"] for line in failed] == [1, 2, 3]

    # The wrong values, corrected in the records as they came back, and sent again as they are.
    fixed = "".join(line["record"].replace('"high"', "4.5") + "\n"
                    for line in failed if line["code"] == "wrong_type")
    again, outcome = await _run(http, fixed.encode())
    assert again["state"] == "completed", again
    assert again["counts"]["succeeded"] == 2
    # The record the database refused comes back as JSON, which can be sent as it is: an upsert.
    (refused,) = [line for line in failed if line["code"] == "23505"]
    upserted, _ = await _run(http, refused["record"].encode() + b"\n", operation="upsert")
    assert upserted["state"] == "completed", upserted
    rows = await db.fetch("SELECT sampled_at, value FROM sensor_readings WHERE sensor_id = $1"
                          " ORDER BY sampled_at", tag)
    assert [r["value"] for r in rows] == [2.0, 1.0, 4.5, 4.5]


async def test_the_record_results_view_shows_the_records(
        http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    tag = f"fview-{uuid.uuid4().hex[:8]}"
    job, _ = await _run(http, ndjson([reading(tag, 0), {**reading(tag, 1), "value": "x" * 5000}]))
    rows = await db.fetch("SELECT idx, record, record_truncated FROM sluice_record_results"
                          " WHERE job_id = $1 ORDER BY idx", job["job_id"])
    assert [(r["idx"], r["record_truncated"]) for r in rows] == [(0, None), (1, True)]
    assert rows[0]["record"] is None and len(rows[1]["record"].encode()) == LIMIT
