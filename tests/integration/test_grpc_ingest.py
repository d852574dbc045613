"""The gRPC BulkIngest service on the running stack, through a grpcio client: Submit answers
once durable, Watch follows the job to its end, and every refusal is HTTP's, as a gRPC status."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import orjson
import pytest

from app.devtools.embedded import free_port
from app.settings import env_var
from schemas.protobuf import message_class
from schemas.targets import BUILTIN_TARGETS_DIR, load_targets
from tests.integration.certs import issue, new_authority
from tests.integration.conftest import Stack, bearer, second_web_async, token_for
from tests.integration.helpers import BASE_MS, results
from web.grpc import bulk_ingest_pb2 as pb
from web.grpc.bulk_ingest_pb2_grpc import BulkIngestStub
from web.payloads.binary import write_varint

RECORDS = 2_000
NOT_A_MESSAGE, INVALID_VALUE = 500, 1_500
CHUNK = 7_000
"""Records bytes per SubmitRequest: not a multiple of a message, so messages span chunks."""
Metadata = tuple[tuple[str, str], ...]


def _auth(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _body(tag: str, count: int = RECORDS, bad: Iterable[int] = ()) -> bytes:
    """SensorReadings messages, length-delimited, built with the target's message class;
    the indexes in ``bad``: NOT_A_MESSAGE is no message at all, INVALID_VALUE holds a NUL."""
    cls = message_class(load_targets(BUILTIN_TARGETS_DIR)["sensor_readings"])
    bad = set(bad)
    parts = []
    for i in range(count):
        if i in bad and i == NOT_A_MESSAGE:
            data = b"\x0a\x05ab"  # a string field longer than the message
        else:
            message = cls(sensor_id=f"{tag}-{i}" if i not in bad else f"{tag}-\x00", value=i / 4)
            message.sampled_at.seconds, rest = divmod(BASE_MS + i, 1000)
            message.sampled_at.nanos = rest * 1_000_000
            data = message.SerializeToString()
        parts.append(write_varint(len(data)) + data)
    return b"".join(parts)


def _requests(header: pb.SubmitHeader | None, body: bytes) -> list[pb.SubmitRequest]:
    messages = [pb.SubmitRequest(header=header)] if header is not None else []
    messages += [pb.SubmitRequest(records=body[at:at + CHUNK]) for at in range(0, len(body), CHUNK)]
    return messages


def _header(**fields: object) -> pb.SubmitHeader:
    return pb.SubmitHeader(**{"target": "sensor_readings", "operation": pb.OPERATION_INSERT,
                              **fields})


@pytest.fixture(scope="module")
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.env[env_var('grpc_port')]}") as open_channel:
        yield open_channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> BulkIngestStub:
    return BulkIngestStub(channel)


async def _refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def _problem(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The problem document the trailing metadata carries (HTTP's problem+json body)."""
    found = dict(error.trailing_metadata() or ())
    document: dict[str, object] = orjson.loads(found["sluice-problem-bin"])
    return document


async def _watch_to_the_end(stub: BulkIngestStub, job_id: str, token: str) -> list[pb.Job]:
    return [job async for job in stub.Watch(pb.WatchRequest(job_id=job_id), metadata=_auth(token),
                                            timeout=120)]


async def test_a_submit_is_answered_once_durable_and_watch_follows_it_to_its_outcome(
        stack: Stack, stub: BulkIngestStub, http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    token = token_for(stack.auth)
    tag = f"tagrpc{uuid.uuid4().hex[:8]}"
    job = await stub.Submit(_requests(_header(), _body(tag, bad=(NOT_A_MESSAGE, INVALID_VALUE))),
                            metadata=_auth(token), timeout=60)
    assert job.job_id and job.target == "sensor_readings" and job.operation == pb.OPERATION_INSERT
    assert job.counts.received == RECORDS and job.HasField("created_at")
    assert job.state in (pb.JOB_STATE_ACCEPTED, pb.JOB_STATE_PROCESSING,
                         pb.JOB_STATE_COMPLETED_WITH_ERRORS) and not job.final

    started = time.monotonic()
    updates = await _watch_to_the_end(stub, job.job_id, token)
    elapsed = time.monotonic() - started
    last = updates[-1]
    assert last.final and [u.final for u in updates[:-1]] == [False] * (len(updates) - 1)
    assert last.state == pb.JOB_STATE_COMPLETED_WITH_ERRORS
    assert (last.counts.received, last.counts.succeeded, last.counts.failed,
            last.counts.duplicates) == (RECORDS, RECORDS - 2, 2, 0)
    assert last.HasField("completed_at")
    assert len(updates) <= 2 + 4 * elapsed  # a few a second at most

    async with http.get(f"/v1/bulk-operations/{job.job_id}") as r:
        shown = await r.json()
    assert shown["state"] == "completed_with_errors"
    assert shown["counts"] == {"received": RECORDS, "succeeded": RECORDS - 2, "failed": 2,
                               "duplicates": 0, "aborted": 0}
    failed = {r["index"]: r["code"] for r in await results(http, job.job_id, "failed")}
    assert failed == {NOT_A_MESSAGE: "malformed_record", INVALID_VALUE: "invalid_string"}
    rows = await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id LIKE $1",
                             tag + "%")
    assert rows == RECORDS - 2


async def test_a_call_without_a_valid_token_is_unauthenticated(stub: BulkIngestStub) -> None:
    body = _body(f"tagrpc{uuid.uuid4().hex[:8]}", 3)
    for metadata in ((), _auth("not-a-jwt")):
        refused = await _refusal(stub.Submit(_requests(_header(), body), metadata=metadata, timeout=30))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused.details().startswith("unauthorized: ")
        watched = await _refusal(stub.Watch(pb.WatchRequest(job_id=str(uuid.uuid4())),
                                            metadata=metadata, timeout=30).read())
        assert watched.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_call_without_its_scope_or_target_rights_is_permission_denied(
        stack: Stack, stub: BulkIngestStub) -> None:
    body = _body(f"tagrpc{uuid.uuid4().hex[:8]}", 3)
    reader = token_for(stack.auth, subject="rpc-reader", scopes=("bulk:read",))
    refused = await _refusal(stub.Submit(_requests(_header(), body), metadata=_auth(reader), timeout=30))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _problem(refused)["type"] == "https://sluice.dev/problems/insufficient-scope"

    writer = token_for(stack.auth, subject="rpc-writer", scopes=("bulk:write",))
    watched = await _refusal(stub.Watch(pb.WatchRequest(job_id=str(uuid.uuid4())),
                                        metadata=_auth(writer), timeout=30).read())
    assert watched.code() == grpc.StatusCode.PERMISSION_DENIED

    nobody = token_for(stack.auth, subject="rpc-nobody", roles=("no-such-role",))
    refused = await _refusal(stub.Submit(_requests(_header(), body), metadata=_auth(nobody), timeout=30))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details().startswith("target-not-allowed: ")


async def test_another_tenants_job_is_not_found(
        stack: Stack, stub: BulkIngestStub, http: aiohttp.ClientSession) -> None:
    job = await stub.Submit(_requests(_header(), _body(f"tagrpc{uuid.uuid4().hex[:8]}", 5)),
                            metadata=_auth(token_for(stack.auth)), timeout=60)
    stranger = token_for(stack.auth, subject="dev", tenant=f"other-{uuid.uuid4().hex[:6]}")
    for job_id in (job.job_id, str(uuid.uuid4())):  # as unknown as an id never issued
        refused = await _refusal(stub.Watch(pb.WatchRequest(job_id=job_id),
                                            metadata=_auth(stranger), timeout=30).read())
        assert refused.code() == grpc.StatusCode.NOT_FOUND
        assert refused.details() == f"job-not-found: no job {job_id!r}"
    async with http.get(f"/v1/bulk-operations/{job.job_id}", headers=bearer(stranger)) as r:
        assert r.status == 404


async def test_a_stream_without_its_header_or_with_an_unknown_target_is_invalid(
        stack: Stack, stub: BulkIngestStub) -> None:
    token = token_for(stack.auth)
    body = _body(f"tagrpc{uuid.uuid4().hex[:8]}", 3)
    for requests, problem in (
        (_requests(None, body), "missing-target"),
        ([], "missing-target"),
        (_requests(_header(target="no_such_target"), body), "unknown-target"),
        (_requests(_header(), body) + [pb.SubmitRequest(header=_header())], "malformed-payload"),
    ):
        refused = await _refusal(stub.Submit(iter(requests), metadata=_auth(token), timeout=30))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused
        assert refused.details().startswith(f"{problem}: ")
        assert _problem(refused)["type"] == f"https://sluice.dev/problems/{problem}"


async def test_an_idempotency_key_replays_the_same_job_through_either_transport(
        stack: Stack, stub: BulkIngestStub, http: aiohttp.ClientSession) -> None:
    token = token_for(stack.auth)
    key = f"rpc-{uuid.uuid4()}"
    body = _body(f"tagrpc{uuid.uuid4().hex[:8]}", 10)
    first = await stub.Submit(_requests(_header(idempotency_key=key), body),
                              metadata=_auth(token), timeout=60)
    again = await stub.Submit(_requests(_header(idempotency_key=key), body),
                              metadata=_auth(token), timeout=60)
    assert again.job_id == first.job_id and again.counts.received == 10
    # The same request over HTTP (same store, same fingerprint) is the same job too.
    async with http.post("/v1/bulk-operations", params={"target": "sensor_readings",
                                                        "operation": "insert"},
                         data=body, headers={"Content-Type": "application/x-protobuf",
                                             "Idempotency-Key": key}) as r:
        assert r.status == 202 and r.headers["Idempotent-Replayed"] == "true"
        assert (await r.json())["job_id"] == first.job_id
    other = _body(f"tagrpc{uuid.uuid4().hex[:8]}", 10)
    refused = await _refusal(stub.Submit(_requests(_header(idempotency_key=key), other),
                                         metadata=_auth(token), timeout=30))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details().startswith("idempotency-key-reused: ")


async def test_an_exhausted_request_bucket_is_resource_exhausted_with_retry_after(
        stack: Stack, stub: BulkIngestStub) -> None:
    # limited-requests: a burst of 3 requests, one per 50 s (the suite's test policy); a
    # tenant of its own, so that its bucket is full. Each call is one request, as on HTTP.
    limited = token_for(stack.auth, subject="limited-requests", tenant=f"rl-{uuid.uuid4().hex[:6]}")
    unknown = pb.WatchRequest(job_id=str(uuid.uuid4()))
    for _ in range(3):
        refused = await _refusal(stub.Watch(unknown, metadata=_auth(limited), timeout=30).read())
        assert refused.code() == grpc.StatusCode.NOT_FOUND
    refused = await _refusal(stub.Watch(unknown, metadata=_auth(limited), timeout=30).read())
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.details().startswith("rate-limited: ")
    trailing = dict(refused.trailing_metadata() or ())
    assert int(trailing["retry-after"]) >= 1 and trailing["ratelimit-limit"] == "3"


async def test_submit_speaks_tls_when_the_web_process_does(stack: Stack) -> None:
    directory = Path(tempfile.mkdtemp(prefix="sluice-grpc-tls-"))
    authority = new_authority(directory)
    cert, key = issue(directory, "web", ["localhost"], authority)
    port = free_port()
    async with second_web_async(stack, directory / "web.log", tls_cert_file=str(cert),
                                tls_key_file=str(key), grpc_port=str(port), web_metrics_port="0"):
        credentials = grpc.ssl_channel_credentials(authority.cert_file.read_bytes())
        options = (("grpc.ssl_target_name_override", "localhost"),)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as secure:
            job = await BulkIngestStub(secure).Submit(
                _requests(_header(), _body(f"tagrpc{uuid.uuid4().hex[:8]}", 5)),
                metadata=_auth(token_for(stack.auth)), timeout=60)
            assert job.counts.received == 5
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            refused = await _refusal(BulkIngestStub(plain).Submit(
                _requests(_header(), b""), metadata=_auth(token_for(stack.auth)), timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
