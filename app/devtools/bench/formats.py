"""The per-format comparison: the same readings sent as NDJSON, JSON, CSV, Protobuf and Avro,
and the Protobuf ones once more through gRPC Submit (grpc_submit), with its ratio to HTTP.

Each format gets the same number of records under a fresh tag (fresh keys, so every run
inserts), one payload after the other on one pipeline, so the figures differ by format
only: body bytes per record, records per second end to end, the web's parse stage (body
read, framed, validated and spooled; wall time from its counters) and the web process's
CPU per record (from /proc, parse and produce together).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro
import orjson

from app.devtools.bench import scenarios
from app.devtools.bench.client import CSV, NDJSON, TARGET
from app.devtools.bench.grpc_submit import grpc_run
from app.devtools.bench.processes import Pipeline, cpu_seconds
from app.devtools.bench.workload import BASE_MS, csv_body, ndjson, reading
from schemas.protobuf import message_class
from schemas.targets import BUILTIN_TARGETS_DIR, Target, load_targets
from web.payloads.binary import write_varint

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
AVRO = "application/avro"


def _target() -> Target:
    return load_targets(BUILTIN_TARGETS_DIR)[TARGET]


def json_body(tag: str, count: int) -> bytes:
    """The readings as one JSON array."""
    return orjson.dumps([reading(tag, i) for i in range(count)])


def protobuf_body(tag: str, count: int) -> bytes:
    """The readings as length-delimited messages of the target's class (as writeDelimitedTo)."""
    cls = message_class(_target())
    parts = []
    for i in range(count):
        record = reading(tag, i)
        message = cls(sensor_id=record["sensor_id"], value=record["value"])
        millis = BASE_MS + i
        message.sampled_at.seconds, remainder = divmod(millis, 1000)
        message.sampled_at.nanos = remainder * 1_000_000
        data = message.SerializeToString()
        parts.append(write_varint(len(data)) + data)
    return b"".join(parts)


def avro_body(tag: str, count: int, codec: str = "null") -> bytes:
    """The readings as an Avro Object Container File, written by fastavro with the target's
    schema (timestamps as epoch milliseconds, which timestamp-millis accepts)."""
    out = io.BytesIO()
    fastavro.writer(out, _target().avro_schema, (reading(tag, i) for i in range(count)),
                    codec=codec)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Format:
    """One body format of the comparison."""

    name: str
    content_type: str
    body: Callable[[str, int], bytes]


FORMATS = (
    Format("NDJSON", NDJSON, lambda tag, n: ndjson(tag, 0, n)),
    Format("JSON", JSON, json_body),
    Format("CSV", CSV, csv_body),
    Format("Protobuf", PROTOBUF, protobuf_body),
    Format("Avro", AVRO, avro_body),
    Format("Avro, deflate", AVRO, lambda tag, n: avro_body(tag, n, "deflate")),
)


async def formats_run(pipeline: Pipeline, tag: str, records: int,
                      say: Callable[[str], None]) -> dict[str, Any]:
    """Each format's figures for ``records`` records, in FORMATS order."""
    runs = []
    for k, form in enumerate(FORMATS):
        body = form.body(f"{tag}-f{k}", records)
        say(f"{records:,} records as {form.name} ({len(body) / records:.1f} bytes each)")
        cpu_before = cpu_seconds(pipeline.web.pid)
        run = await scenarios.http_run(pipeline, [(body, records)], content_type=form.content_type)
        web_cpu = cpu_seconds(pipeline.web.pid) - cpu_before
        parse = next(s for s in run.stages if s.stage == "parse")
        runs.append({
            "format": form.name, "content_type": form.content_type,
            "bytes_per_record": len(body) / records, "to_202_s": run.to_202_s,
            "total_s": run.total_s, "records_per_s": run.records_per_s,
            "parse_s": parse.seconds, "parse_us_per_record": parse.seconds / records * 1e6,
            "web_cpu_us_per_record": web_cpu / records * 1e6, "states": sorted(set(run.states)),
        })
        del body
    return {"records": records, "runs": runs,
            **await _over_grpc(pipeline, f"{tag}-grpc", records, runs, say)}


async def _over_grpc(pipeline: Pipeline, tag: str, records: int, runs: list[dict[str, Any]],
                     say: Callable[[str], None]) -> dict[str, Any]:
    """The Protobuf records once more through gRPC Submit (a row of ``runs``), and its ratios
    to the HTTP Protobuf run of this same bench: records/s to the answer (what the ingress
    takes) and end to end."""
    http = next(run for run in runs if run["content_type"] == PROTOBUF)
    body = protobuf_body(tag, records)
    say(f"{records:,} Protobuf records through gRPC Submit")
    run = await grpc_run(pipeline, body, records)
    runs.append(run)
    return {"grpc_over_http_protobuf": {
        "to_answer": http["to_202_s"] / run["to_202_s"],
        "end_to_end": run["records_per_s"] / http["records_per_s"]}}
