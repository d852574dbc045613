"""The OpenAPI document against the live service.

Schemathesis runs every phase (examples, coverage, fuzzing, and stateful: submit -> status
-> results -> abort through the document's links) and fails on any 5xx and any answer
that breaks the document. Then every status the document promises must have been answered
by some request: schemathesis's, or one of the provocations below for what random input
cannot reach (a token without scopes, an exhausted bucket, a deadline, a request in
flight, PostgreSQL gone). A status documented but never returned fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.integration.conftest import Stack, bearer, db_pool, second_web, token_for
from tests.integration.helpers import job_running_until_aborted, ndjson, reading
from web.openapi import openapi_document

REPOSITORY = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 20
CHECKS_LEFT_OUT = {
    "positive_data_acceptance":
        "records are checked against their target's schema, which the document does not "
        "name (it is per caller): a schema-valid body can rightly be refused (422)",
    "use_after_free":
        "DELETE aborts a job; the job and its results stay readable (README, HTTP API)",
}

OPERATIONS_LEFT_OUT = {
    "getBulkOperationEvents": "an event stream stays open until its job ends",
    "getTenantEvents": "a tenant's event stream stays open until the client leaves",
}
"""Left to the provocations below (``_event_streams``): schemathesis reads a whole answer."""


@dataclass
class Answers:
    """Statuses answered, by operationId, by schemathesis and the provocations together."""

    by_operation: dict[str, set[int]] = field(default_factory=dict)

    def add(self, operation_id: str, status: int) -> None:
        self.by_operation.setdefault(operation_id, set()).add(status)


SCHEMA: OpenApiSchema = schemathesis.openapi.from_dict(openapi_document())


ROUTES = [(method.upper(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"),
           operation["operationId"])
          for path, item in openapi_document()["paths"].items()
          for method, operation in item.items() if method != "parameters"]


def _operation_of(method: str, path: str) -> str | None:
    """The operationId a request was for, if the document has it."""
    return next((operation_id for route_method, pattern, operation_id in ROUTES
                 if route_method == method and pattern.match(path)), None)


@dataclass
class Run:
    returncode: int
    output: str
    answers: Answers


@pytest.fixture(scope="module")
def schemathesis_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Run:
    har = tmp_path_factory.mktemp("contract") / "run.har"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
        f"{stack.base_url}/v1/openapi.json",
        "--header", f"Authorization: Bearer {token_for(stack.auth, subject='contract')}",
        "--checks", "all", "--exclude-checks", ",".join(CHECKS_LEFT_OUT),
        *[flag for operation_id in OPERATIONS_LEFT_OUT
          for flag in ("--exclude-operation-id", operation_id)],
        "--max-examples", str(MAX_EXAMPLES), "--request-timeout", "30",
        "--no-color", "--generation-database", "none",
        "--report", "har", "--report-har-path", str(har),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.contract_hooks",
           "PYTHONPATH": str(REPOSITORY)}
    done = subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True,
                          timeout=240, check=False)
    answers = Answers()
    if har.exists():
        for entry in json.loads(har.read_text())["log"]["entries"]:
            operation_id = _operation_of(entry["request"]["method"],
                                         urlsplit(entry["request"]["url"]).path)
            if operation_id is not None:
                answers.add(operation_id, entry["response"]["status"])
    return Run(done.returncode, done.stdout + done.stderr, answers)


def _failures(output: str, limit: int = 12_000) -> str:
    """Schemathesis's failures and summary, each reproducing request cut short: a generated
    body can be long enough to push everything else out of the message."""
    shown = re.sub(r"(curl [^\n]{400})[^\n]+", r"\1…", output)
    start = shown.find("FAILURES")
    return shown[start if start >= 0 else 0:][:limit]


def test_the_live_service_keeps_its_openapi_contract(schemathesis_run: Run) -> None:
    assert schemathesis_run.returncode == 0, _failures(schemathesis_run.output)
    assert "Stateful" in schemathesis_run.output
    # Accepted (202), or answered at its end for a `Prefer: wait` example (200).
    assert schemathesis_run.answers.by_operation.get("submitBulkOperation", set()) & {200, 202}, \
        "no submission was accepted: the stateful phase never reached a job"


# --- provocations: statuses random input does not reach -----------------------------------

class Client:
    """Sends a request, checks its answer against the document, and records its status."""

    def __init__(self, base_url: str, answers: Answers) -> None:
        self.base_url = base_url
        self.answers = answers

    def call(self, operation_id: str, method: str, path: str, **kwargs: object) -> requests.Response:
        response = requests.request(method, self.base_url + path, timeout=60, **kwargs)  # type: ignore[arg-type]
        SCHEMA.find_operation_by_id(operation_id).validate_response(response)
        self.answers.add(operation_id, response.status_code)
        return response


def _job_operations(job_id: str) -> list[tuple[str, str, str]]:
    return [
        ("listBulkOperations", "GET", "/v1/bulk-operations"),
        ("getBulkOperation", "GET", f"/v1/bulk-operations/{job_id}"),
        ("abortBulkOperation", "DELETE", f"/v1/bulk-operations/{job_id}"),
        ("getBulkOperationResults", "GET", f"/v1/bulk-operations/{job_id}/results"),
    ]


def _webhook_operations(webhook_id: str) -> list[tuple[str, str, str]]:
    """The webhook operations but registration (which needs a body)."""
    return [
        ("listWebhooks", "GET", "/v1/webhooks"),
        ("getWebhook", "GET", f"/v1/webhooks/{webhook_id}"),
        ("deleteWebhook", "DELETE", f"/v1/webhooks/{webhook_id}"),
        ("listWebhookDeliveries", "GET", f"/v1/webhooks/{webhook_id}/deliveries"),
    ]


def _every_v1_operation(job_id: str) -> list[tuple[str, str, str]]:
    return [("submitBulkOperation", "POST", "/v1/bulk-operations?target=sensor_readings"),
            *_job_operations(job_id),
            ("createWebhook", "POST", "/v1/webhooks"),
            *_webhook_operations(job_id),
            ("listTargets", "GET", "/v1/targets"),
            ("getTarget", "GET", "/v1/targets/sensor_readings"),
            ("getTargetProto", "GET", "/v1/targets/sensor_readings.proto"),
            ("getOverview", "GET", "/v1/overview")]


BODY = {"data": ndjson([reading("contract", 1)]),
        "headers": {"Content-Type": "application/x-ndjson"}}


def _authorised(stack: Stack, client: Client, job_id: str) -> None:
    """401 without a token, 403 without scopes, 429 once a principal's requests run out."""
    no_scopes = bearer(token_for(stack.auth, subject="contract-no-scopes", scopes=()))
    # Its own tenant, so that no other test's requests share its bucket (burst 3, 1 per 50 s).
    limited = bearer(token_for(stack.auth, subject="limited-requests",
                               tenant=f"contract-{uuid.uuid4().hex[:8]}"))
    for operation_id, method, path in _every_v1_operation(job_id):
        body = BODY if method == "POST" else {}
        client.call(operation_id, method, path, **body)  # type: ignore[arg-type]
        client.call(operation_id, method, path, **{**body, "headers": {  # type: ignore[arg-type]
            **body.get("headers", {}), **no_scopes}})
    for _ in range(4):
        for operation_id, method, path in _every_v1_operation(job_id):
            body = BODY if method == "POST" else {}
            client.call(operation_id, method, path, **{**body, "headers": {  # type: ignore[arg-type]
                **body.get("headers", {}), **limited}})


def _submissions(stack: Stack, client: Client) -> None:
    """403 for an operation the policy does not grant, 413 past the record burst, 409 for a
    job that is not running."""
    insert_only = bearer(token_for(stack.auth, subject="contract-insert-only", roles=("insert-only",)))
    client.call("submitBulkOperation", "POST",
                "/v1/bulk-operations?target=sensor_readings&operation=upsert",
                data=BODY["data"], headers={**BODY["headers"], **insert_only})
    burst = bearer(token_for(stack.auth, subject="limited-records",
                             tenant=f"contract-{uuid.uuid4().hex[:8]}"))  # 10-record burst
    client.call("submitBulkOperation", "POST", "/v1/bulk-operations?target=sensor_readings",
                data=ndjson([reading("contract-burst", i) for i in range(11)]),
                headers={**BODY["headers"], **burst})
    dev = bearer(token_for(stack.auth))
    accepted = client.call("submitBulkOperation", "POST", "/v1/bulk-operations?target=sensor_readings",
                           data=BODY["data"], headers={**BODY["headers"], **dev}).json()
    for _ in range(120):
        job = client.call("getBulkOperation", "GET", accepted["links"]["self"], headers=dev).json()
        if job["completed_at"] is not None:
            break
        time.sleep(0.5)
    client.call("abortBulkOperation", "DELETE", accepted["links"]["self"], headers=dev)
    # 202: a job still running when aborted. One sealed with no envelope runs until aborted
    # (a real submission may end first: schemathesis's stateful aborts only sometimes land).
    running = asyncio.run(_job_that_runs_until_aborted(stack))
    client.call("abortBulkOperation", "DELETE", f"/v1/bulk-operations/{running}", headers=dev)


async def _job_that_runs_until_aborted(stack: Stack) -> str:
    """An accepted job of the dev tenant with no records in Kafka: no worker ends it."""
    async with db_pool(stack) as pool:
        return await job_running_until_aborted(pool, "dev")


WEBHOOK = {"url": "https://receiver.example/hooks/contract", "events": ["job.ended"]}


def _webhooks(stack: Stack, client: Client) -> None:
    """Each answer of the webhook operations, in a tenant of their own: registered (201),
    read, listed, deleted (204); a body that is not JSON (400), too big (413), a URL or
    events refused (422), one endpoint past the tenant's limit (409), a bad page cursor
    (400). Then the endpoints schemathesis registered for the dev tenant are deleted, so
    that the rest of the session's dev jobs are not delivered to them."""
    own = bearer(token_for(stack.auth, subject="contract-webhooks",
                           tenant=f"contract-{uuid.uuid4().hex[:8]}"))
    created = client.call("createWebhook", "POST", "/v1/webhooks", json=WEBHOOK, headers=own).json()
    for operation_id, method, path in _webhook_operations(created["id"]):
        client.call(operation_id, method, path, headers=own)
    path = f"/v1/webhooks/{created['id']}"
    client.call("getWebhook", "GET", path, headers=own)  # 404: deleted
    client.call("createWebhook", "POST", "/v1/webhooks", data=b"not json", headers=own)
    client.call("createWebhook", "POST", "/v1/webhooks",
                json={**WEBHOOK, "padding": "x" * 20_000}, headers=own)
    client.call("createWebhook", "POST", "/v1/webhooks", json={"url": "ftp://x"}, headers=own)
    client.call("createWebhook", "POST", "/v1/webhooks", json={**WEBHOOK, "events": ["nope"]},
                headers=own)
    kept = client.call("createWebhook", "POST", "/v1/webhooks", json=WEBHOOK, headers=own).json()
    for _ in range(100):
        if client.call("createWebhook", "POST", "/v1/webhooks", json=WEBHOOK,
                       headers=own).status_code == 409:
            break
    client.call("listWebhookDeliveries", "GET", f"/v1/webhooks/{kept['id']}/deliveries?cursor=x",
                headers=own)
    dev = bearer(token_for(stack.auth))
    for headers in (own, dev):
        for webhook in client.call("listWebhooks", "GET", "/v1/webhooks", headers=headers).json()["webhooks"]:
            client.call("deleteWebhook", "DELETE", webhook["links"]["self"], headers=headers)


def _slow_body(seconds: float) -> Iterator[bytes]:
    yield ndjson([reading("contract-slow", 0)])
    time.sleep(seconds)
    yield ndjson([reading("contract-slow", 1)])


def _deadlines(stack: Stack, client: Client, log: Path) -> None:
    """408 past the submission deadline; 409 for a key whose first request is in flight."""
    dev = {**bearer(token_for(stack.auth)), **BODY["headers"]}
    with second_web(stack, log, submission_timeout_s="1") as web:
        late = Client(web.base_url, client.answers)
        key = {"Idempotency-Key": f"contract-{uuid.uuid4()}"}
        first = threading.Thread(target=late.call, args=(
            "submitBulkOperation", "POST", "/v1/bulk-operations?target=sensor_readings"),
            kwargs={"data": _slow_body(3), "headers": {**dev, **key}})
        first.start()
        time.sleep(0.5)
        late.call("submitBulkOperation", "POST", "/v1/bulk-operations?target=sensor_readings",
                  data=BODY["data"], headers={**dev, **key})
        first.join()


SOCKET_NAME = ".s.PGSQL.5432"


@contextmanager
def _forwarder(upstream: Path, folder: Path) -> Iterator[threading.Event]:
    """PostgreSQL's unix socket ``upstream``, forwarded through ``folder``/SOCKET_NAME;
    setting the event cuts every connection and refuses new ones, as a database that went
    away does."""
    cut = threading.Event()
    started = threading.Event()
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if cut.is_set():
            client_w.close()
            return
        server_r, server_w = await asyncio.open_unix_connection(str(upstream))
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def serve() -> None:
        server = await asyncio.start_unix_server(handle, str(folder / SOCKET_NAME))
        started.set()
        await asyncio.to_thread(cut.wait)
        server.close()
        connections = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield cut
    finally:
        cut.set()
        thread.join(10)
        loop.close()


EVENT_STREAMS = ("getTenantEvents", "/v1/events")


def _open_stream(client: Client, operation_id: str, path: str,
                 headers: dict[str, str]) -> requests.Response:
    """An event stream's answer, its body left unread (a stream does not end by itself)."""
    response = requests.get(client.base_url + path, headers=headers, stream=True, timeout=30)
    client.answers.add(operation_id, response.status_code)
    if response.status_code == 200:
        assert response.headers["Content-Type"].startswith("text/event-stream")
    else:
        SCHEMA.find_operation_by_id(operation_id).validate_response(response)
    return response


def _event_streams(stack: Stack, client: Client, job_id: str) -> None:
    """The event streams' answers but 503 (see _database_gone): 200, and each refusal."""
    dev = bearer(token_for(stack.auth))
    no_scopes = bearer(token_for(stack.auth, subject="contract-no-scopes", scopes=()))
    limited = bearer(token_for(stack.auth, subject="limited-requests",
                               tenant=f"contract-{uuid.uuid4().hex[:8]}"))
    ended = client.call("submitBulkOperation", "POST", "/v1/bulk-operations?target=sensor_readings",
                        data=BODY["data"], headers={**BODY["headers"], **dev}).json()["job_id"]
    for operation_id, path in (("getBulkOperationEvents", f"/v1/bulk-operations/{ended}/events"),
                               EVENT_STREAMS):
        for headers in ({}, no_scopes, *[limited] * 4, dev):
            _open_stream(client, operation_id, path, headers).close()
    _open_stream(client, "getBulkOperationEvents", f"/v1/bulk-operations/{job_id}/events",
                 dev).close()


def _database_gone(stack: Stack, client: Client, folder: Path, job_id: str) -> None:
    """503 from every operation that reads PostgreSQL, and from /readyz, once it is gone;
    and from the event streams past the process's limit of them (1 here)."""
    socket_dir = parse_qs(urlsplit(stack.dsn).query)["host"][0]
    dev = bearer(token_for(stack.auth))
    with _forwarder(Path(socket_dir) / SOCKET_NAME, folder) as cut, second_web(
            stack, folder / "web.log", database_url=stack.dsn.replace(socket_dir, str(folder)),
            readiness_cache_s="0", events_max_watchers="1") as web:
        gone = Client(web.base_url, client.answers)
        gone.call("getReadiness", "GET", "/readyz")
        with _open_stream(gone, *EVENT_STREAMS, dev):
            for operation_id, path in (EVENT_STREAMS, ("getBulkOperationEvents",
                                                       f"/v1/bulk-operations/{job_id}/events")):
                _open_stream(gone, operation_id, path, dev).close()
        time.sleep(2)  # the web process notices the client has gone (within a second)
        cut.set()
        time.sleep(0.5)
        for operation_id, method, path in _job_operations(job_id):
            gone.call(operation_id, method, path, headers=dev)
        for operation_id, method, path in _webhook_operations(job_id):
            gone.call(operation_id, method, path, headers=dev)
        gone.call("createWebhook", "POST", "/v1/webhooks", json=WEBHOOK, headers=dev)
        gone.call("getOverview", "GET", "/v1/overview", headers=dev)
        for operation_id, path in (EVENT_STREAMS, ("getBulkOperationEvents",
                                                   f"/v1/bulk-operations/{job_id}/events")):
            _open_stream(gone, operation_id, path, dev).close()
        gone.call("submitBulkOperation", "POST", "/v1/bulk-operations?target=sensor_readings",
                  data=BODY["data"], headers={**BODY["headers"], **dev})
        gone.call("getReadiness", "GET", "/readyz")


def test_every_documented_status_is_answered(
    stack: Stack, schemathesis_run: Run, tmp_path: Path
) -> None:
    answers = schemathesis_run.answers
    client = Client(stack.base_url, answers)
    job_id = str(uuid.uuid4())
    client.call("getOpenApiDocument", "GET", "/v1/openapi.json")
    # 404s schemathesis reaches only when it happens to generate an unknown name.
    dev = bearer(token_for(stack.auth))
    client.call("getTarget", "GET", "/v1/targets/no-such-target", headers=dev)
    client.call("getTargetProto", "GET", "/v1/targets/no-such-target.proto", headers=dev)
    _authorised(stack, client, job_id)
    _submissions(stack, client)
    _webhooks(stack, client)
    _deadlines(stack, client, tmp_path / "deadline-web.log")
    _event_streams(stack, client, job_id)
    _database_gone(stack, client, tmp_path, job_id)
    never = {}
    for path_item in openapi_document()["paths"].values():
        for method, operation in path_item.items():
            if method == "parameters":
                continue
            documented = {int(status) for status in operation["responses"]}
            missing = documented - answers.by_operation.get(operation["operationId"], set())
            if missing:
                never[operation["operationId"]] = sorted(missing)
    assert not never, f"documented, never answered: {never}"
