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
from app.devtools.bench.connect_peer import connect_schema, jdbc_url
from app.devtools.bench.csv_peer import pgloader_command, pgloader_uri
from app.devtools.bench.long_run import payload_sizes
from app.devtools.bench.processes import RssWatch
from app.devtools.bench.report import render
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


def test_the_connect_peer_reads_the_targets_columns_with_their_types_and_timestamps() -> None:
    schema = connect_schema(SENSOR)
    assert schema["type"] == "struct" and not schema["optional"]
    assert [(f["field"], f["type"], f.get("name"), f["optional"]) for f in schema["fields"]] == [
        ("sensor_id", "string", None, False),
        ("value", "double", None, False),
        ("sampled_at", "int64", "org.apache.kafka.connect.data.Timestamp", False),
    ]


def test_the_connect_peer_reaches_a_unix_socket_postgres_through_junixsocket() -> None:
    url = jdbc_url("postgresql://postgres:@/postgres?host=/tmp/pg%20dir/run")
    assert url.startswith("jdbc:postgresql://localhost/postgres?socketFactory=org.newsclub.net.unix.")
    assert url.endswith("socketFactoryArg=/tmp/pg%20dir/run/.s.PGSQL.5432")
    assert jdbc_url("postgresql://u:p@db.example:6543/sluice") == "jdbc:postgresql://db.example:6543/sluice"


def test_the_report_shows_the_kafka_runs_and_the_connect_ratio_or_why_they_are_missing() -> None:
    run = {"label": "1 x 10 NDJSON", "records": 10, "payload_mb": 0.1, "to_202_s": 0.1,
           "total_s": 0.5, "records_per_s": 20.0}
    drain = {"records": 10, "produce_s": 0.1, "total_s": 0.5, "records_per_s": 20.0}
    kafka = {"nodes": 3, "single": run,
             "producers": {**drain, "label": "producers -> input topic"},
             "connect": {**drain, "label": "Kafka Connect + Debezium JDBC sink", "tasks": 4,
                         "batch_size": 1000, "records_per_s": 40.0},
             "producers_over_connect": 0.5}
    text = render({"machine": "m", "kafka": kafka})
    assert "on Apache Kafka (3 nodes; replication factor 3, acks=all)" in text
    assert "Kafka Connect + Debezium JDBC sink" in text and ": 0.50x" in text
    assert "on Apache Kafka: not measured (java not found on the PATH)" in render(
        {"machine": "m", "kafka": {"skipped": "java not found on the PATH"}})
