"""`sluice bench` runs on a stack of its own and reports every figure it promises."""

from __future__ import annotations

import shutil
import subprocess
import sys

import orjson


def test_bench_prints_every_figure_as_json() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--records", "4000", "--payloads", "4",
         "--big-mb", "0.5", "--producer-records", "300", "--sweep", "2000",
         "--sweep-records", "1000", "--small-jobs", "24", "--small-job-records", "50", "--watchers", "20",
         "--small-clients", "4", "--long-records", "900", "--long-payload-records", "400",
         "--format-records", "2000", "--no-kafka", "--json"],
        capture_output=True, timeout=280, check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    figures = orjson.loads(completed.stdout)
    single, concurrent, big = figures["single"], figures["concurrent"], figures["big"]
    assert (single["records"], concurrent["records"]) == (4000, 4000)
    # Every worker process of the pipeline is scraped: the stage records add up to the run's.
    assert single["states"] == concurrent["states"] == big["states"] == ["completed"]
    assert 0 < big["payload_mb"] <= 0.5 and big["peak_web_rss_mb"] > 10
    stages = {s["stage"]: s for s in single["stages"]}
    assert set(stages) == {"parse", "produce", "consume", "write", "publish", "report"}
    for stage in ("parse", "produce", "consume", "write"):
        assert stages[stage]["records"] == 4000 and stages[stage]["seconds"] > 0, stage
    assert figures["producers"]["records"] == 300 and figures["producers"]["records_per_s"] > 0
    dirty = figures["dirty"]
    # 1 % invalid (40), 1 % existing keys (40), 0.1 % CHECK violations (4): exact counts.
    assert (dirty["records"], dirty["failed"]) == (4000, 84)
    assert dirty["states"] == ["completed_with_errors"] and dirty["clean_ratio"] > 0
    assert figures["copy"]["records"] == 4000 and 0 < figures["copy"]["end_to_end_ratio"] < 1
    watched = figures["watched"]
    assert (watched["records"], watched["watchers"], watched["states"]) == (4000, 20, ["completed"])
    assert watched["watchers_saw_end"] == 20 and watched["single_ratio"] > 0
    assert figures["copy"]["concurrent_ratio"] > 0
    assert [r["batch_size"] for r in figures["batch_sweep"]["runs"]] == [2000]
    small = figures["small_jobs"]
    assert (small["jobs"], small["records"], small["clients"]) == (24, 1200, 4)
    assert small["states"] == ["completed"] and 0 < small["p50_s"] <= small["p99_s"] <= small["max_s"]
    inline = figures["small_jobs_inline"]
    assert (inline["jobs"], inline["states"]) == (24, ["completed"])
    assert inline["answered_inline"] == 24  # 50-record jobs end well within 30 s
    # The bench's own rate limits admit its clients: nothing was refused and retried.
    assert small["retries"] == {} and single["retries"] == {}
    csv = figures["csv"]
    assert csv["records"] == 4000 and csv["sluice"]["states"] == ["completed"]
    verdicts = {t["what"].split(",")[0]: t["verdict"] for t in figures["targets"]}
    if shutil.which("pgloader"):
        assert csv["pgloader"]["records"] == 4000 and csv["ratio"] > 0
        assert verdicts["Sluice over pgloader"] in ("met", "MISSED")
    else:
        assert csv["pgloader"] is None and "apt-get install pgloader" in csv["pgloader_missing"]
        assert verdicts["Sluice over pgloader"] == "NOT MEASURED"
    assert set(verdicts) >= {
        "end to end", "end to end as a share of raw COPY", "big payload", "small jobs",
        "producers on the input topic", "dirty rate as a share of the clean rate"}
    long = figures["long"]
    assert [p["records"] for p in long["payloads"]] == [400, 400, 100] and long["records"] == 900
    assert all(p["peak_web_rss_mb"] > 10 and p["peak_worker_rss_mb"] > 10 for p in long["payloads"])
    assert {"web RSS flat over 900 records (3 payloads)",
            "worker RSS flat over 900 records (3 payloads)"} <= {t["what"] for t in figures["targets"]}
    formats = figures["formats"]
    assert formats["records"] == 2000
    assert [r["format"] for r in formats["runs"]] == [
        "NDJSON", "JSON", "CSV", "Protobuf", "Avro", "Avro, deflate", "Protobuf over gRPC"]
    ratios = formats["grpc_over_http_protobuf"]
    assert ratios["to_answer"] > 0 and ratios["end_to_end"] > 0
    for run in formats["runs"]:
        assert run["states"] == ["completed"], run
        assert run["bytes_per_record"] > 0 and run["records_per_s"] > 0
        assert run["parse_us_per_record"] > 0 and run["web_cpu_us_per_record"] >= 0
    by_format = {r["format"]: r for r in formats["runs"]}
    assert by_format["Protobuf"]["bytes_per_record"] < by_format["NDJSON"]["bytes_per_record"]
    assert "kafka" not in figures  # --no-kafka: its runs are tested in the Kafka lane
    # Progress goes to stderr, so that stdout stays machine-readable.
    assert b"one payload of 4,000 records" in completed.stderr
