"""The gRPC Submit run: the Protobuf format's records sent through BulkIngest.Submit instead
of an HTTP POST, on the same pipeline right after it, so that the two differ by transport
only (same body, same parse and produce path behind web.intake)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

import aiohttp
import grpc

from app.devtools.bench.client import BenchError, Retries, check_counts, scrape, wait_terminal
from app.devtools.bench.processes import Pipeline, cpu_seconds
from app.devtools.bench.workload import stage_deltas
from web.grpc import bulk_ingest_pb2 as pb
from web.grpc.bulk_ingest_pb2_grpc import BulkIngestStub

CHUNK_BYTES: Final = 256 * 1024
"""Records bytes per SubmitRequest: the pieces the HTTP side reads a body in."""
TARGET: Final = "sensor_readings"


def submit_requests(body: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.SubmitRequest]:
    """A Submit stream: the header, then ``body`` (length-delimited messages) in chunks."""
    yield pb.SubmitRequest(header=pb.SubmitHeader(target=TARGET, operation=pb.OPERATION_INSERT))
    for at in range(0, len(body), chunk_bytes):
        yield pb.SubmitRequest(records=body[at:at + chunk_bytes])


async def grpc_run(pipeline: Pipeline, body: bytes, records: int,
                   timeout_s: float = 600) -> dict[str, Any]:
    """Submit ``body`` once over gRPC and poll its job to the end (as the HTTP runs do);
    the figures of formats_run's rows, from the first message to the job's end."""
    requests = list(submit_requests(body))  # built before the clock starts, as HTTP bodies are
    metadata = (("authorization", pipeline.auth_headers["Authorization"]),)
    retries = Retries()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                     headers=pipeline.auth_headers) as http, \
            grpc.aio.insecure_channel(f"127.0.0.1:{pipeline.grpc_port}") as channel:
        before = await scrape(http, pipeline.web_metrics_url)
        cpu_before = cpu_seconds(pipeline.web.pid)
        started = time.perf_counter()
        try:
            stub = BulkIngestStub(channel)  # type: ignore[no-untyped-call]  # generated
            job = await stub.Submit(iter(requests), metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            raise BenchError(f"gRPC submission refused: {e.code().name} {e.details()}") from e
        to_answer = time.perf_counter() - started
        ended = await wait_terminal(http, pipeline.base_url, job.job_id, retries, timeout_s)
        total = time.perf_counter() - started
        web_cpu = cpu_seconds(pipeline.web.pid) - cpu_before
        check_counts([ended], records)
        after = await scrape(http, pipeline.web_metrics_url)
    parse = next(s for s in stage_deltas(before, after, ("parse",)))
    return {
        "format": "Protobuf over gRPC", "content_type": "grpc (BulkIngest.Submit)",
        "bytes_per_record": len(body) / records, "to_202_s": to_answer, "total_s": total,
        "records_per_s": records / total, "parse_s": parse.seconds,
        "parse_us_per_record": parse.seconds / records * 1e6,
        "web_cpu_us_per_record": web_cpu / records * 1e6, "states": [ended["state"]],
    }
