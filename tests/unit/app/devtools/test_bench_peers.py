"""The bench's pure helpers for its peers and clients: the CSV file both Sluice and pgloader
load, pgloader's URI and command, Retry-After, long-run payload sizes, RSS windows."""

from __future__ import annotations

import asyncio
import csv
import io
import mmap
import os
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from app.devtools.bench.client import MAX_RETRY_AFTER_S, BenchError, retry_after_s
from app.devtools.bench.csv_peer import pgloader_command, pgloader_uri
from app.devtools.bench.long_run import payload_sizes
from app.devtools.bench.processes import RssWatch
from app.devtools.bench.workload import CSV_HEADER, copy_rows, csv_body, ndjson
from schemas.targets import BUILTIN_TARGETS_DIR, load_target
from schemas.validation import RecordConverter

SENSOR = load_target(BUILTIN_TARGETS_DIR / "sensor_readings.avsc")


def test_csv_body_holds_the_same_readings_as_the_copy_rows_with_a_header() -> None:
    body = csv_body("t", 2_500)
    assert body.startswith(CSV_HEADER)
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert list(rows[0]) == ["sensor_id", "value", "sampled_at"]
    expected = list(copy_rows("t", 2_500))
    assert [(r["sensor_id"], float(r["value"]), datetime.fromisoformat(r["sampled_at"]))
            for r in rows] == expected
    assert rows[1234]["sampled_at"] == "2024-01-01T00:00:01.234+00:00"  # RFC 3339, zone, millis


def test_sluice_csv_path_reads_the_csv_rows_as_the_ndjson_readings() -> None:
    converter = RecordConverter(SENSOR)
    from_csv = [converter.from_text(r) for r in csv.DictReader(io.StringIO(csv_body("t", 300).decode()))]
    from_json = [converter.from_json(orjson.loads(line))
                 for line in ndjson("t", 0, 300).splitlines()]
    assert from_csv == from_json


def test_pgloader_uri_for_the_embedded_unix_socket() -> None:
    uri, password = pgloader_uri("postgresql://postgres:@/postgres?host=/tmp/sluice-bench-ab_1/postgres")
    assert uri == "postgresql://postgres@unix:/tmp/sluice-bench-ab_1/postgres:5432/postgres"
    assert password is None


def test_pgloader_uri_for_tcp_keeps_the_password_out_of_the_uri() -> None:
    uri, password = pgloader_uri("postgresql://sluice:s%40cret@db.example:6432/ingest?sslmode=require")
    assert uri == "postgresql://sluice@db.example:6432/ingest?sslmode=require"
    assert password == "s@cret"


def test_pgloader_uri_with_socket_port_and_a_directory_it_cannot_name() -> None:
    uri, _ = pgloader_uri("postgresql://app@/appdb?host=/run/pg&port=5433")
    assert uri == "postgresql://app@unix:/run/pg:5433/appdb"
    with pytest.raises(BenchError, match="socket directory"):
        pgloader_uri("postgresql://app@/appdb?host=/tmp/with space")


def test_pgloader_command_skips_the_header_and_names_the_columns() -> None:
    command = pgloader_command(Path("/data/bench.csv"), "postgresql://u@unix:/d:5432/db", "scratch")
    assert command.startswith("LOAD CSV\n  FROM '/data/bench.csv' (sensor_id, value, sampled_at)\n")
    assert ("  INTO postgresql://u@unix:/d:5432/db\n  TARGET TABLE scratch\n"
            "  TARGET COLUMNS (sensor_id, value, sampled_at)\n") in command
    assert command.rstrip().endswith("WITH skip header = 1, fields terminated by ',';")


@pytest.mark.parametrize(("header", "seconds"), [
    ("5", 5.0), ("0", 0.0), (None, 1.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0),
    ("-3", 0.0), ("86400", MAX_RETRY_AFTER_S),
])
def test_retry_after_is_bounded_seconds(header: str | None, seconds: float) -> None:
    assert retry_after_s(header) == seconds


def test_payload_sizes_cut_records_into_consecutive_payloads() -> None:
    assert payload_sizes(10_000_000, 1_000_000) == [1_000_000] * 10
    assert payload_sizes(2_500_000, 1_000_000) == [1_000_000, 1_000_000, 500_000]
    assert payload_sizes(300, 1_000_000) == [300]
    assert payload_sizes(0, 1_000_000) == []


async def test_rss_watch_keeps_the_peak_overall_and_per_window() -> None:
    watch = RssWatch(os.getpid(), interval_s=0.005).start()
    # An anonymous mapping, touched (resident) then unmapped: given back to the system for
    # sure, where a freed bytearray may stay in the allocator's heap.
    ballast = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    await asyncio.sleep(0.05)
    ballast.close()  # before the window ends: the next window starts without it
    big_window = watch.new_window()
    await asyncio.sleep(0.05)
    small_window = watch.new_window()
    peak = await watch.stop()
    assert peak >= big_window > small_window
    assert big_window - small_window > 32 * 2**20
