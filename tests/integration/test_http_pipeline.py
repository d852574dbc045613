"""HTTP submission to rows in PostgreSQL, through the real broker, worker and database."""

from __future__ import annotations

import gzip
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.integration.conftest import TEST_MAX_BODY_BYTES
from tests.integration.helpers import BASE_MS, NDJSON, ndjson, reading, results, submit, wait_terminal


async def rows_for(db: asyncpg.Pool, prefix: str) -> dict[tuple[str, int], float]:
    rows = await db.fetch(
        "SELECT sensor_id, (extract(epoch FROM sampled_at) * 1000)::bigint AS ms, value"
        " FROM sensor_readings WHERE sensor_id LIKE $1", prefix + "%")
    return {(r["sensor_id"], r["ms"] - BASE_MS): r["value"] for r in rows}


async def test_100k_ndjson_with_invalid_and_repeated_records(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    tag = f"big-{uuid.uuid4().hex[:8]}"
    records: list[Any] = [reading(f"{tag}-{i % 500}", i) for i in range(99_940)]
    invalid_at = set(range(5_000, 100_000, 9_990))  # 10 positions
    repeated = [records[i * 13] for i in range(50)]
    body: list[Any] = records + repeated
    for position in sorted(invalid_at):
        body.insert(position, {"sensor_id": f"{tag}-bad", "value": "high", "sampled_at": BASE_MS})
    assert len(body) == 100_000

    accepted = await submit(http, ndjson(body))
    assert accepted["records_received"] == 100_000
    job = await wait_terminal(http, accepted["job_id"], wait_s=240)

    assert job["state"] == "completed_with_errors"
    assert job["counts"] == {
        "received": 100_000, "succeeded": 99_940, "failed": 10, "duplicates": 50, "aborted": 0}
    stored = await rows_for(db, tag)
    assert len(stored) == 99_940
    failed = await results(http, accepted["job_id"], "failed")
    assert [r["index"] for r in failed] == sorted(invalid_at)
    assert {r["code"] for r in failed} == {"wrong_type"}
    duplicates = await results(http, accepted["job_id"], "duplicate")
    assert [r["index"] for r in duplicates] == list(range(99_950, 100_000))
    every = await results(http, accepted["job_id"])
    assert [r["index"] for r in every] == list(range(100_000))


async def test_json_array_envelope_csv_and_gzip_all_land(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    tag = f"fmt-{uuid.uuid4().hex[:8]}"
    array = orjson.dumps([reading(f"{tag}-a", i) for i in range(3)])
    envelope = orjson.dumps({"target": "sensor_readings", "operation": "insert",
                             "records": [reading(f"{tag}-e", i) for i in range(3)]})
    csv = ("sensor_id,value,sampled_at\n"
           + "".join(f"{tag}-c,{i}.5,2023-10-01T12:00:0{i}Z\n" for i in range(3))).encode()
    compressed = gzip.compress(ndjson([reading(f"{tag}-g", i) for i in range(3)]))
    jobs = [
        await submit(http, array, headers={"Content-Type": "application/json"}),
        await submit(http, envelope, headers={"Content-Type": "application/json"}),
        await submit(http, csv, headers={"Content-Type": "text/csv"}),
        await submit(http, compressed, headers={**NDJSON, "Content-Encoding": "gzip"}),
    ]
    for accepted in jobs:
        job = await wait_terminal(http, accepted["job_id"])
        assert job["state"] == "completed", job
        assert job["counts"]["succeeded"] == 3
    stored = await rows_for(db, tag)
    assert len(stored) == 12
    assert stored[(f"{tag}-c", 1000)] == 1.5


async def test_upsert_then_delete(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    tag = f"ups-{uuid.uuid4().hex[:8]}"
    first = await submit(http, ndjson([reading(tag, i, 1.0) for i in range(4)]))
    await wait_terminal(http, first["job_id"])
    # Same keys twice in one payload: the later record wins, as in the payload's order.
    second = await submit(http, ndjson([reading(tag, 0, 2.0), reading(tag, 0, 3.0),
                                        reading(tag, 1, 4.0)]), operation="upsert")
    assert (await wait_terminal(http, second["job_id"]))["counts"]["succeeded"] == 3
    assert (await rows_for(db, tag))[(tag, 0)] == 3.0
    deletion = await submit(http, ndjson([{"sensor_id": tag, "sampled_at": BASE_MS + 2}]),
                            operation="delete")
    assert (await wait_terminal(http, deletion["job_id"]))["state"] == "completed"
    assert sorted(await rows_for(db, tag)) == [(tag, 0), (tag, 1), (tag, 3)]


async def test_insert_of_an_existing_key_and_a_row_the_database_rejects(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    tag = f"rej-{uuid.uuid4().hex[:8]}"
    await db.execute(
        f"ALTER TABLE sensor_readings ADD CONSTRAINT no_{tag.replace('-', '_')}"
        f" CHECK (sensor_id <> '{tag}-poison')")
    seed = await submit(http, ndjson([reading(tag, 0)]))
    await wait_terminal(http, seed["job_id"])
    accepted = await submit(http, ndjson([
        reading(tag, 1), reading(f"{tag}-poison", 2), reading(tag, 0, 9.0), reading(tag, 3)]))
    job = await wait_terminal(http, accepted["job_id"])
    assert job["counts"] == {"received": 4, "succeeded": 2, "failed": 2, "duplicates": 0, "aborted": 0}
    failed = {r["index"]: r for r in await results(http, accepted["job_id"], "failed")}
    assert failed[1]["code"] == "23514"  # check_violation, isolated from the rest of the batch
    assert failed[2]["code"] == "23505"
    assert failed[2]["key"] == {"sensor_id": tag, "sampled_at": "2023-10-01T12:00:00Z"}
    assert sorted(await rows_for(db, tag)) == [(tag, 0), (tag, 1), (tag, 3)]


async def test_duplicates_are_recognised_across_jobs(http: aiohttp.ClientSession) -> None:
    tag = f"dup-{uuid.uuid4().hex[:8]}"
    body = ndjson([reading(tag, i) for i in range(5)])
    first = await wait_terminal(http, (await submit(http, body))["job_id"])
    second = await wait_terminal(http, (await submit(http, body))["job_id"])
    assert first["counts"]["succeeded"] == 5
    assert second["state"] == "completed"
    assert second["counts"] == {"received": 5, "succeeded": 0, "failed": 0, "duplicates": 5, "aborted": 0}


async def test_results_are_readable_while_the_job_runs(http: aiohttp.ClientSession) -> None:
    tag = f"live-{uuid.uuid4().hex[:8]}"
    accepted = await submit(http, ndjson([reading(tag, i) for i in range(30_000)]))
    seen_partial = False
    while True:
        async with http.get(f"/v1/bulk-operations/{accepted['job_id']}") as r:
            job = await r.json()
        lines = await results(http, accepted["job_id"])
        indexes = [line["index"] for line in lines]
        assert indexes == sorted(indexes)
        if job["state"] == "processing" and 0 < len(lines) < 30_000:
            seen_partial = True
        if job["state"] == "completed":
            break
    assert len(lines) == 30_000
    assert seen_partial or job["state"] == "completed"


@pytest.mark.parametrize(
    ("headers", "body", "params", "status", "slug"),
    [
        ({"Content-Type": "application/xml"}, b"<a/>", {}, 415, "unsupported-media-type"),
        ({"Content-Type": "application/json"}, b'[{"sensor_id": "x",', {}, 400, "malformed-payload"),
        (NDJSON, b"{}\n", {"target": "nope"}, 422, "unknown-target"),
        (NDJSON, b"{}\n", {"operation": "merge"}, 422, "unknown-operation"),
        (NDJSON, b"", {}, 422, "empty-payload"),
        ({**NDJSON, "Content-Encoding": "lz4"}, b"{}\n", {}, 415, "unsupported-media-type"),
    ],
)
async def test_rejected_payloads_get_problem_details(
    http: aiohttp.ClientSession, headers: dict[str, str], body: bytes,
    params: dict[str, str], status: int, slug: str,
) -> None:
    query = {"target": "sensor_readings", "operation": "insert", **params}
    async with http.post("/v1/bulk-operations", params=query, data=body, headers=headers) as r:
        assert r.status == status
        assert r.content_type == "application/problem+json"
        problem = await r.json(content_type=None)
    assert problem["status"] == status
    assert problem["type"].endswith(slug)
    assert problem["instance"] == "/v1/bulk-operations"


async def test_a_payload_over_the_limit_writes_nothing(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    tag = f"big-{uuid.uuid4().hex[:8]}"
    body = ndjson([reading(tag, i) for i in range(TEST_MAX_BODY_BYTES // 60 + 1000)])
    assert len(body) > TEST_MAX_BODY_BYTES
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings"},
                         data=body, headers=NDJSON) as r:
        assert r.status == 413
        assert r.content_type == "application/problem+json"
    # A later job on the same partitions completes, so anything of the big one would be in.
    after = await submit(http, ndjson([reading(f"{tag}-after", i) for i in range(8)]))
    await wait_terminal(http, after["job_id"])
    stored = await rows_for(db, tag)
    assert {sensor for sensor, _ in stored} == {f"{tag}-after"}
    assert len(stored) == 8


async def test_unknown_job_is_404_problem(http: aiohttp.ClientSession) -> None:
    for path in (f"/v1/bulk-operations/{uuid.uuid4()}", f"/v1/bulk-operations/{uuid.uuid4()}/results"):
        async with http.get(path) as r:
            assert r.status == 404
            assert r.content_type == "application/problem+json"


async def test_long_strings_are_split_across_messages_not_refused(
    http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    tag = f"long-{uuid.uuid4().hex[:8]}"
    filler = "x" * 6_000
    # About 1.5 MB of records per partition: over the broker's 1 MB message limit.
    body = ndjson([reading(f"{tag}-{i:04d}-{filler}", i) for i in range(1_000)])
    job = await wait_terminal(http, (await submit(http, body))["job_id"])
    assert job["state"] == "completed"
    assert job["counts"]["succeeded"] == 1_000
    assert await db.fetchval(
        "SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1", tag + "%") == 1_000
