"""The benchmark's pure parts: generated payloads, metric scrapes, stage deltas, the table."""

from __future__ import annotations

import orjson

from app.devtools.bench.report import render
from app.devtools.bench.workload import (
    RECORDS,
    SECONDS,
    copy_rows,
    ndjson,
    ndjson_of_size,
    parse_metrics,
    stage_deltas,
)


def test_ndjson_records_are_distinct_and_match_the_copy_rows() -> None:
    lines = ndjson("t", 0, 2_500).splitlines()
    docs = [orjson.loads(line) for line in lines]
    assert len({(d["sensor_id"], d["sampled_at"]) for d in docs}) == 2_500
    rows = list(copy_rows("t", 2_500))
    assert [(d["sensor_id"], d["value"]) for d in docs] == [(s, v) for s, v, _ in rows]
    assert int(rows[7][2].timestamp() * 1000) == docs[7]["sampled_at"]


def test_sized_payload_stays_within_its_size_and_counts_its_records() -> None:
    body, records = ndjson_of_size("t", 123_456)
    assert 123_456 - 200 < len(body) <= 123_456
    assert body.count(b"\n") == records
    assert body.endswith(b"\n")


SCRAPE = """# HELP sluice_stage_seconds_total Time spent in each pipeline stage.
# TYPE sluice_stage_seconds_total counter
sluice_stage_seconds_total{stage="parse"} 1.5
sluice_stage_seconds_total{stage="produce"} 0.25
sluice_stage_seconds_created{stage="parse"} 1.7e+09
sluice_stage_records_total{stage="parse"} 1000.0
sluice_http_requests_total{route="/healthz",status="200"} 3.0
"""


def test_metrics_parse_keeps_only_the_named_counters_by_stage() -> None:
    samples = parse_metrics(SCRAPE, (SECONDS, RECORDS))
    assert samples == {(SECONDS, "parse"): 1.5, (SECONDS, "produce"): 0.25,
                       (RECORDS, "parse"): 1000.0}


def test_stage_deltas_subtract_scrapes_and_give_a_rate() -> None:
    before = {(SECONDS, "parse"): 1.0, (RECORDS, "parse"): 100.0}
    after = {(SECONDS, "parse"): 3.0, (RECORDS, "parse"): 1100.0, (SECONDS, "produce"): 0.5}
    parse, produce, missing = stage_deltas(before, after, ("parse", "produce", "write"))
    assert (parse.seconds, parse.records, parse.records_per_s) == (2.0, 1000.0, 500.0)
    assert produce.records_per_s is None  # no records counted: no rate invented
    assert (missing.seconds, missing.records) == (0.0, 0.0)


def test_render_names_missed_targets_and_the_slowest_stage() -> None:
    figures = {
        "machine": "2 cores",
        "single": {"label": "1 x 10", "records": 10, "payload_mb": 0.001, "to_202_s": 0.1,
                   "total_s": 1.0, "records_per_s": 10.0,
                   "stages": [{"stage": "parse", "seconds": 0.1, "records": 10, "records_per_s": 100.0},
                              {"stage": "write", "seconds": 0.7, "records": 10, "records_per_s": 14.3}]},
        "targets": [{"what": "end to end", "figure": "10 records/s", "target": ">= 60,000",
                     "verdict": "MISSED", "ok": False}],
        "batch_sweep": {"records": 10, "default": 1000, "fastest": 500,
                        "runs": [{"batch_size": 500, "total_s": 1.0, "records_per_s": 10.0},
                                 {"batch_size": 1000, "total_s": 2.0, "records_per_s": 5.0}]},
    }
    text = render(figures)
    assert "MISSED: end to end: 10 records/s" in text
    assert "most time: database write (worker)" in text
    assert "1000 (default)" in text and "fastest: 500" in text
