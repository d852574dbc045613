"""`sluice submit | jobs | results | watch` as a person runs them, against the real stack."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import fastavro
import orjson

from schemas.targets import BUILTIN_TARGETS_DIR
from tests.integration.conftest import Stack, token_for
from tests.integration.helpers import reading


def sluice(stack: Stack, *args: str, cwd: Path, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """The `sluice` command with SLUICE_URL and SLUICE_TOKEN set, as a user would set them."""
    env = {**os.environ, "SLUICE_URL": stack.base_url,
           "SLUICE_TOKEN": token or token_for(stack.auth), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


async def run(stack: Stack, *args: str, cwd: Path, token: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(sluice, stack, *args, cwd=cwd, token=token)


def readings_file(path: Path, tag: str, n: int, bad_every: int = 0) -> list[int]:
    """NDJSON readings; every ``bad_every``-th has a timestamp that is not one. The bad indexes."""
    bad = []
    with path.open("wb") as out:
        for i in range(n):
            record = reading(tag, i)
            if bad_every and i % bad_every == 3:
                record["sampled_at"] = f"not a time {i}"
                bad.append(i)
            out.write(orjson.dumps(record) + b"\n")
    return bad


def job_id_of(output: str) -> str:
    found = re.search(r"job ([0-9a-f-]{36}) accepted", output)
    assert found, output
    return found.group(1)


async def test_submit_watch_shows_the_summary_writes_the_failures_and_exits_3(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    tag = f"cli-{uuid.uuid4().hex[:6]}"
    bad = readings_file(tmp_path / "readings.ndjson", tag, 5_000, bad_every=250)
    done = await run(stack, "submit", "readings.ndjson", "--target", "sensor_readings", "--watch",
                     "--failures", "failed.ndjson", cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    job_id = job_id_of(done.stdout)
    assert "5,000 records" in done.stdout
    for shown in ("completed_with_errors", "4,980", "invalid_timestamp", "failed.ndjson"):
        assert shown in done.stdout, done.stdout
    failed = [orjson.loads(line) for line in (tmp_path / "failed.ndjson").read_bytes().splitlines()]
    assert [line["index"] for line in failed] == bad
    assert {line["code"] for line in failed} == {"invalid_timestamp"}

    listed = await run(stack, "jobs", "--limit", "5", cwd=tmp_path)
    assert listed.returncode == 0 and job_id in listed.stdout, listed.stdout
    streamed = await run(stack, "results", job_id, "--status", "failed", cwd=tmp_path)
    assert streamed.returncode == 0
    assert [orjson.loads(line)["index"] for line in streamed.stdout.splitlines()] == bad
    watched = await run(stack, "watch", job_id, "--failures", "again.ndjson", cwd=tmp_path)
    assert watched.returncode == 3 and (tmp_path / "again.ndjson").read_bytes() == (
        tmp_path / "failed.ndjson").read_bytes()


async def test_gzip_files_and_br_gzip_zstd_on_the_way_complete_and_exit_0(
    stack: Stack, tmp_path: Path
) -> None:
    tag = f"cli-gz-{uuid.uuid4().hex[:6]}"
    readings_file(tmp_path / "plain.ndjson", tag, 3000)
    gzipped = tmp_path / "packed.ndjson.gz"
    gzipped.write_bytes(gzip.compress((tmp_path / "plain.ndjson").read_bytes()))
    csv = tmp_path / "rows.csv"
    csv.write_text("sensor_id,sampled_at,value\n" + "".join(
        f"{tag}-csv,2026-02-01T00:00:{i:02d}Z,{i}\n" for i in range(60)))
    # Sent again, the same records are duplicates: the job still completes.
    for args in (["plain.ndjson", "--compress", "gzip"], ["rows.csv", "--compress", "gzip"],
                 ["plain.ndjson", "--compress", "br"], ["rows.csv", "--compress", "zstd"]):
        done = await run(stack, "submit", *args, "--target", "sensor_readings", "--watch",
                         cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "completed" in done.stdout
    # An Avro file, its format told by its name.
    schema = fastavro.parse_schema(orjson.loads((BUILTIN_TARGETS_DIR / "sensor_readings.avsc").read_bytes()))
    with (tmp_path / "rows.avro").open("wb") as out:
        fastavro.writer(out, schema, [
            {"sensor_id": f"{tag}-avro", "value": float(i),
             "sampled_at": datetime(2026, 3, 1, 0, 0, i, tzinfo=UTC)} for i in range(50)],
            codec="deflate")
    done = await run(stack, "submit", "rows.avro", "--target", "sensor_readings", "--watch",
                     cwd=tmp_path)
    assert done.returncode == 0 and "50 records" in done.stdout, done.stdout + done.stderr
    # The .gz file holds the same records: upserted, they are all duplicates.
    done = await run(stack, "submit", "packed.ndjson.gz", "--target", "sensor_readings",
                     "--operation", "upsert", "--watch", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3,000" in done.stdout


async def test_retry_failed_links_the_new_job_to_the_old_one(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    tag = f"cli-retry-{uuid.uuid4().hex[:6]}"
    bad = readings_file(tmp_path / "first.ndjson", tag, 50, bad_every=10)
    first = await run(stack, "submit", "first.ndjson", "--target", "sensor_readings", "--watch",
                      cwd=tmp_path)
    first_id = job_id_of(first.stdout)
    (tmp_path / "fixed.ndjson").write_bytes(b"".join(
        orjson.dumps(reading(tag, i)) + b"\n" for i in bad))
    again = await run(stack, "submit", "fixed.ndjson", "--target", "sensor_readings",
                      "--retry-failed", first_id, "--watch", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    async with http.get(f"/v1/bulk-operations/{job_id_of(again.stdout)}") as answer:
        job = await answer.json()
    assert job["retry_of"] == first_id and job["counts"]["succeeded"] == len(bad)

    unknown = await run(stack, "submit", "fixed.ndjson", "--target", "sensor_readings",
                        "--retry-failed", str(uuid.uuid4()), cwd=tmp_path)
    assert unknown.returncode == 1 and "Bad retry_of" in unknown.stdout, unknown.stdout
    # Another tenant's job is no job to retry either.
    theirs = token_for(stack.auth, tenant=f"other-{uuid.uuid4().hex[:6]}")
    refused = await run(stack, "submit", "fixed.ndjson", "--target", "sensor_readings",
                        "--retry-failed", first_id, cwd=tmp_path, token=theirs)
    assert refused.returncode == 1 and "Bad retry_of" in refused.stdout


async def test_a_refused_request_is_one_line_and_exit_1(stack: Stack, tmp_path: Path) -> None:
    readings_file(tmp_path / "r.ndjson", "cli-refused", 3)
    done = await run(stack, "submit", "r.ndjson", "--target", "sensor_readings", cwd=tmp_path,
                     token="not-a-token")
    assert done.returncode == 1
    assert "401 Unauthorized" in done.stdout and "Traceback" not in done.stdout + done.stderr
    missing = await run(stack, "submit", "nothing.ndjson", "--target", "sensor_readings",
                        cwd=tmp_path)
    assert missing.returncode == 1 and "nothing.ndjson" in missing.stdout
