"""The bench's per-format comparison: every format carries the same rows; the report shows it."""

from __future__ import annotations

import csv
import io

import orjson

from app.devtools.bench.formats import FORMATS, avro_body, json_body, protobuf_body
from app.devtools.bench.goals import targets
from app.devtools.bench.report import render
from app.devtools.bench.workload import csv_body, ndjson
from schemas.targets import Target
from schemas.validation import RecordConverter
from tests.unit.app.devtools.test_bench_goals import _figures
from web.payloads.avro_format import AvroFramer
from web.payloads.protobuf_format import ProtobufFramer
from web.payloads.records import ConvertedRecord


def test_every_format_carries_the_same_rows(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    convert = RecordConverter(target)
    expected = [convert.from_json(orjson.loads(line)) for line in ndjson("t", 0, 50).splitlines()]
    assert [convert.from_json(r) for r in orjson.loads(json_body("t", 50))] == expected
    assert [convert.from_text(r) for r in csv.DictReader(io.StringIO(csv_body("t", 50).decode()))] \
        == expected
    for framer, body in (
        (ProtobufFramer(target, max_record_bytes=1000), protobuf_body("t", 50)),
        (AvroFramer(target, max_record_bytes=1000, max_bytes=1 << 20), avro_body("t", 50)),
        (AvroFramer(target, max_record_bytes=1000, max_bytes=1 << 20), avro_body("t", 50, "deflate")),
    ):
        records = [r for batch in framer.feed(body) for r in batch]
        framer.finish()
        assert [r.row for r in records if isinstance(r, ConvertedRecord)] == expected
    assert len(protobuf_body("t", 50)) < len(ndjson("t", 0, 50)) / 2


def test_the_report_shows_each_format() -> None:
    runs = [{"format": f.name, "content_type": f.content_type, "bytes_per_record": 20.0 + k,
             "to_202_s": 1.0, "total_s": 2.5, "records_per_s": 80_000.0 + k,
             "parse_s": 0.4, "parse_us_per_record": 2.0, "web_cpu_us_per_record": 3.25,
             "states": ["completed"]} for k, f in enumerate(FORMATS)]
    figures = _figures(formats={"records": 200_000, "runs": runs})
    figures["targets"] = targets(figures)
    text = render(figures)
    assert "body formats: 200,000 records in each, one payload at a time" in text
    header = next(line for line in text.splitlines() if line.startswith("format "))
    assert header.split() == ["format", "bytes/record", "to", "202", "s", "end", "to", "end", "s",
                              "records/s", "parse", "us/record", "web", "CPU", "us/record"]
    protobuf = next(line for line in text.splitlines() if line.startswith("Protobuf "))
    assert protobuf.split() == ["Protobuf", "23.0", "1.00", "2.50", "80,003", "2.0", "3.2"]
    assert any(line.startswith("Avro, deflate ") for line in text.splitlines())


def test_the_report_gives_grpc_submit_its_ratio_to_http_protobuf() -> None:
    runs = [{"format": "Protobuf over gRPC", "content_type": "grpc (BulkIngest.Submit)",
             "bytes_per_record": 23.0, "to_202_s": 0.8, "total_s": 2.0, "records_per_s": 100_000.0,
             "parse_s": 0.4, "parse_us_per_record": 2.0, "web_cpu_us_per_record": 3.0,
             "states": ["completed"]}]
    figures = _figures(formats={"records": 200_000, "runs": runs, "grpc_over_http_protobuf": {
        "to_answer": 1.25, "end_to_end": 1.04}})
    figures["targets"] = targets(figures)
    text = render(figures)
    assert "  gRPC Submit / HTTP Protobuf, same run: 1.25x records/s to the answer " \
           "(gRPC's Job, HTTP's 202), 1.04x end to end" in text.splitlines()
    assert any(line.startswith("Protobuf over gRPC ") for line in text.splitlines())
