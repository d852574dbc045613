"""Security, against the real web server and real Valkey: authentication, scopes, per-target
rights, tenant isolation, rate limits, TLS 1.3 only, security headers and the dev token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.devtools.devauth import DEV_AUDIENCE, DEV_ISSUER
from app.devtools.embedded import free_port
from app.settings import env_var
from tests.integration.certs import issue
from tests.integration.conftest import Stack, bearer, second_web, token_for
from tests.integration.helpers import NDJSON, ndjson, reading, submit

BULK = "/v1/bulk-operations"
AUTH_VARS = ("auth_jwks_file", "auth_jwks_url", "auth_issuer", "auth_audience", "access_policy_file")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "dev", "tenant": "dev",
              "scope": "bulk:write bulk:read", "roles": ["dev"], "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(stack: Stack, **overrides: Any) -> str:
    """Signed with the real dev key: only the claims are wrong."""
    key = serialization.load_pem_private_key(stack.auth.key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return jwt.encode(_claims(**overrides), key, algorithm="ES256", headers={"kid": stack.auth.kid})


def _forged(stack: Stack) -> str:
    """Valid claims, same kid, but signed by a key that is not the dev key."""
    return jwt.encode(_claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                      headers={"kid": stack.auth.kid})


def _alg_none(stack: Stack) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": stack.auth.kid}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def _hs256_with_public_key(stack: Stack) -> str:
    """Key confusion: an HMAC keyed with the (public) verification key."""
    key = serialization.load_pem_private_key(stack.auth.key_file.read_bytes(), password=None)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (_b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": stack.auth.kid}).encode())
                     + "." + _b64(json.dumps(_claims()).encode()))
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def _status(http: aiohttp.ClientSession, method: str, path: str, token: str | None,
                  **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    headers = {**kwargs.pop("headers", {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession(str(http._base_url)) as anonymous, \
            anonymous.request(method, path, headers=headers, **kwargs) as r:
        body = await r.json(content_type=None) if r.content_type.endswith("json") else {}
        return r.status, body, r.headers


# Authentication --------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [("POST", BULK), ("GET", f"{BULK}/x"),
                                              ("DELETE", f"{BULK}/x"), ("GET", f"{BULK}/x/results")])
async def test_no_token_is_401_with_a_bearer_challenge(
    http: aiohttp.ClientSession, method: str, path: str
) -> None:
    status, body, headers = await _status(http, method, path, None)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="sluice"'
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["type"].endswith("/unauthorized")


@pytest.mark.parametrize("case", [
    "forged", "expired", "wrong-audience", "wrong-issuer", "alg-none", "hs256-public-key",
    "too-long-lived", "not-yet-valid", "no-tenant", "garbage",
])
async def test_invalid_tokens_are_401(http: aiohttp.ClientSession, stack: Stack, case: str) -> None:
    now = int(time.time())
    token = {
        "forged": lambda: _forged(stack),
        "expired": lambda: _signed(stack, iat=now - 1200, exp=now - 600),
        "wrong-audience": lambda: _signed(stack, aud="someone-else"),
        "wrong-issuer": lambda: _signed(stack, iss="https://evil.example"),
        "alg-none": lambda: _alg_none(stack),
        "hs256-public-key": lambda: _hs256_with_public_key(stack),
        "too-long-lived": lambda: _signed(stack, exp=now + 7 * 24 * 3600),
        "not-yet-valid": lambda: _signed(stack, nbf=now + 600, exp=now + 900),
        "no-tenant": lambda: _signed(stack, tenant=None),
        "garbage": lambda: "not.a.jwt",
    }[case]()
    status, body, headers = await _status(http, "POST", BULK, token, data=ndjson([reading("x", 1)]),
                                          params={"target": "sensor_readings"}, headers=NDJSON)
    assert status == 401, body
    assert headers["WWW-Authenticate"].startswith('Bearer realm="sluice", error="invalid_token"')
    assert len(body["detail"]) < 60  # a short reason, no verification internals


async def test_a_valid_dev_token_is_accepted(http: aiohttp.ClientSession, stack: Stack) -> None:
    status, body, _ = await _status(http, "POST", BULK, _signed(stack), headers=NDJSON,
                                    data=ndjson([reading(f"ok-{uuid.uuid4().hex[:6]}", 1)]),
                                    params={"target": "sensor_readings"})
    assert status == 202, body


# Scopes and per-target rights -------------------------------------------------------------

async def test_missing_scope_is_403(http: aiohttp.ClientSession, stack: Stack) -> None:
    reader = token_for(stack.auth, scopes=("bulk:read",))
    status, body, headers = await _status(http, "POST", BULK, reader, headers=NDJSON,
                                          data=ndjson([reading("s", 1)]),
                                          params={"target": "sensor_readings"})
    assert status == 403
    assert body["type"].endswith("/insufficient-scope")
    assert 'error="insufficient_scope", scope="bulk:write"' in headers["WWW-Authenticate"]
    writer = token_for(stack.auth, scopes=("bulk:write",))
    job = await submit(http, ndjson([reading(f"scope-{uuid.uuid4().hex[:6]}", 1)]))
    for path in (f"{BULK}/{job['job_id']}", f"{BULK}/{job['job_id']}/results"):
        status, body, _ = await _status(http, "GET", path, writer)
        assert status == 403
        assert body["type"].endswith("/insufficient-scope")


async def test_target_and_operation_not_granted_are_403_and_leave_nothing(
    http: aiohttp.ClientSession, stack: Stack, db: asyncpg.Pool
) -> None:
    subject = f"insert-only-{uuid.uuid4().hex[:6]}"
    insert_only = token_for(stack.auth, subject=subject, roles=("insert-only",))
    records = ndjson([reading(f"{subject}", i) for i in range(3)])
    # delete is granted separately: insert does not imply it
    status, body, _ = await _status(http, "POST", BULK, insert_only, headers=NDJSON, data=records,
                                    params={"target": "sensor_readings", "operation": "delete"})
    assert status == 403
    assert body["type"].endswith("/target-not-allowed")
    # the same, with target and operation in the JSON body: refused once the body is parsed
    envelope = json.dumps({"target": "sensor_readings", "operation": "upsert",
                           "records": [reading(subject, 9)]}).encode()
    status, body, _ = await _status(http, "POST", BULK, insert_only, data=envelope,
                                    headers={"Content-Type": "application/json"})
    assert status == 403, body
    # no role at all: nothing is granted
    nobody = token_for(stack.auth, subject=f"{subject}-none", roles=())
    status, _, _ = await _status(http, "POST", BULK, nobody, headers=NDJSON, data=records,
                                 params={"target": "sensor_readings"})
    assert status == 403
    assert await db.fetchval("SELECT count(*) FROM sluice_jobs WHERE principal LIKE $1",
                             subject + "%") == 0
    # what is granted works
    status, body, _ = await _status(http, "POST", BULK, insert_only, headers=NDJSON, data=records,
                                    params={"target": "sensor_readings", "operation": "insert"})
    assert status == 202, body


# Tenant isolation ---------------------------------------------------------------------------

async def test_another_tenants_job_is_404_exactly_like_an_unknown_one(
    http: aiohttp.ClientSession, stack: Stack, db: asyncpg.Pool
) -> None:
    tenant_a = token_for(stack.auth, subject="alice", tenant=f"a-{uuid.uuid4().hex[:6]}")
    tenant_b = token_for(stack.auth, subject="bob", tenant=f"b-{uuid.uuid4().hex[:6]}")
    status, job, _ = await _status(http, "POST", BULK, tenant_a, headers=NDJSON,
                                   data=ndjson([reading("tenant", i) for i in range(3)]),
                                   params={"target": "sensor_readings"})
    assert status == 202
    job_id = job["job_id"]
    assert await db.fetchval("SELECT principal FROM sluice_jobs WHERE job_id = $1", job_id) == "alice"
    status, _, _ = await _status(http, "GET", f"{BULK}/{job_id}", tenant_a)
    assert status == 200
    unknown = str(uuid.uuid4())
    for method, suffix in (("GET", ""), ("GET", "/results"), ("DELETE", "")):
        status, body, _ = await _status(http, method, f"{BULK}/{job_id}{suffix}", tenant_b)
        status_unknown, body_unknown, _ = await _status(http, method, f"{BULK}/{unknown}{suffix}",
                                                        tenant_b)
        assert status == status_unknown == 404
        assert body["type"] == body_unknown["type"] and body["title"] == body_unknown["title"]
    # bob could not abort it: still alice's and running or done, never aborted
    state = await db.fetchval("SELECT state FROM sluice_jobs WHERE job_id = $1", job_id)
    assert state != "aborted"


async def test_idempotency_keys_are_per_tenant(http: aiohttp.ClientSession, stack: Stack) -> None:
    key = f"shared-{uuid.uuid4()}"
    body = ndjson([reading(f"idem-{uuid.uuid4().hex[:6]}", 1)])
    jobs = []
    for tenant in ("t1", "t2"):
        token = token_for(stack.auth, subject=f"idem-{tenant}", tenant=f"{tenant}-{key}")
        status, doc, headers = await _status(http, "POST", BULK, token, data=body,
                                             params={"target": "sensor_readings"},
                                             headers={**NDJSON, "Idempotency-Key": key})
        assert status == 202 and "Idempotent-Replayed" not in headers
        jobs.append(doc["job_id"])
    assert jobs[0] != jobs[1]


# Rate limits ----------------------------------------------------------------------------------

async def test_over_the_request_rate_is_429_with_retry_after(http: aiohttp.ClientSession,
                                                              stack: Stack) -> None:
    limited = token_for(stack.auth, subject="limited-requests")  # burst 3 in the test policy
    statuses = []
    for _ in range(3):
        status, _, _ = await _status(http, "GET", f"{BULK}/{uuid.uuid4()}", limited)
        statuses.append(status)
    assert statuses == [404, 404, 404]
    status, body, headers = await _status(http, "GET", f"{BULK}/{uuid.uuid4()}", limited)
    assert status == 429
    assert body["type"].endswith("/rate-limited")
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Limit"] == "3"
    assert headers["RateLimit-Remaining"] == "0"
    assert int(headers["RateLimit-Reset"]) >= 1
    # another principal is not affected
    status, _, _ = await _status(http, "GET", f"{BULK}/{uuid.uuid4()}", token_for(stack.auth))
    assert status == 404


async def test_over_the_record_rate_is_429_and_leaves_nothing(
    http: aiohttp.ClientSession, stack: Stack, db: asyncpg.Pool
) -> None:
    limited = token_for(stack.auth, subject="limited-records")  # 10 records burst, 1/s
    first, second = f"rl-{uuid.uuid4().hex[:6]}", f"rl-{uuid.uuid4().hex[:6]}"
    status, body, _ = await _status(http, "POST", BULK, limited, headers=NDJSON,
                                    data=ndjson([reading(first, i) for i in range(10)]),
                                    params={"target": "sensor_readings"})
    assert status == 202, body
    status, body, headers = await _status(http, "POST", BULK, limited, headers=NDJSON,
                                          data=ndjson([reading(second, i) for i in range(5)]),
                                          params={"target": "sensor_readings"})
    assert status == 429, body
    assert body["type"].endswith("/rate-limited")
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Limit"] == "10"
    # refused after parsing, before anything was produced: no job, no rows
    assert await db.fetchval("SELECT count(*) FROM sluice_jobs WHERE principal = 'limited-records'") == 1
    await asyncio.sleep(1)
    assert await db.fetchval("SELECT count(*) FROM sensor_readings WHERE sensor_id = $1", second) == 0


# Headers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/healthz", f"{BULK}/{uuid.uuid4()}"])
async def test_security_headers_on_every_response(http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(path) as r:
        assert r.status in (200, 404)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert "Strict-Transport-Security" not in r.headers  # plain HTTP on loopback


# TLS ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_web(stack: Stack) -> Iterator[tuple[int, Path]]:
    """A second web process on the session's services, with TLS on."""
    directory = Path(tempfile.mkdtemp(prefix="sluice-tls-"))
    cert, key = issue(directory, "localhost", ["localhost"])
    with second_web(stack, directory / "web.log", tls_cert_file=str(cert),
                    tls_key_file=str(key)) as web:
        yield web.port, cert


def test_a_tls_1_2_client_is_refused(tls_web: tuple[int, Path]) -> None:
    import socket

    port, cert = tls_web
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="localhost")
    # the same client allowed TLS 1.3 gets through, and 1.3 is what is spoken
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.3"


async def test_tls_1_3_serves_with_hsts(stack: Stack, tls_web: tuple[int, Path]) -> None:
    port, cert = tls_web
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(f"https://localhost:{port}") as https:
        async with https.get(f"{BULK}/{uuid.uuid4()}", ssl=context, headers=stack.auth_headers) as r:
            assert r.status == 404
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        async with https.get(f"{BULK}/{uuid.uuid4()}", ssl=context) as r:
            assert r.status == 401


@pytest.mark.parametrize("case", ["no-jwks", "plain-http-off-loopback", "half-tls"])
def test_an_insecure_web_process_refuses_to_start(stack: Stack, case: str) -> None:
    env = {**stack.env, env_var("http_port"): str(free_port())}
    if case == "no-jwks":
        env.pop(env_var("auth_jwks_file"))
    elif case == "plain-http-off-loopback":
        env[env_var("http_host")] = "0.0.0.0"
    else:
        env[env_var("tls_cert_file")] = "/nonexistent/cert.pem"
    done = subprocess.run([sys.executable, "-m", "app.cli", "web"], env=env, capture_output=True,
                          timeout=60)
    assert done.returncode != 0
    assert b"cannot start securely" in done.stderr


# The dev token of `sluice run`, and `sluice token` ------------------------------------------------

def test_sluice_token_mints_only_with_the_local_dev_key(stack: Stack) -> None:
    env = {k: v for k, v in stack.env.items() if k not in {env_var(n) for n in AUTH_VARS}}
    env[env_var("data_dir")] = str(stack.data)
    command = [sys.executable, "-m", "app.cli", "token", "--sub", "cli", "--tenant", "cli-tenant",
               "--scope", "bulk:read", "--role", "dev", "--ttl", "600"]
    minted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)
    claims = jwt.decode(minted.stdout.strip(), options={"verify_signature": False})
    assert (claims["sub"], claims["tenant"], claims["scope"]) == ("cli", "cli-tenant", "bulk:read")
    assert claims["exp"] - claims["iat"] == 600
    for other in ({env_var("auth_jwks_url"): "https://idp.example/jwks.json"},
                  {env_var("auth_jwks_file"): str(stack.data / "elsewhere.json")}):
        refused = subprocess.run(command, env={**env, **other}, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert "not the local dev key" in refused.stderr
        assert refused.stdout == ""
    too_long = subprocess.run([*command[:-1], "86400"], env=env, capture_output=True, timeout=60)
    assert too_long.returncode == 2


@pytest.fixture
def dev_run(stack: Stack) -> Iterator[tuple[str, str, Path]]:
    """`sluice run` as a user starts it (on the session's services, its own topics and data):
    (base URL, the token its banner prints, its data folder)."""
    data = Path(tempfile.mkdtemp(prefix="sluice-run-"))
    data.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in stack.env.items() if k not in {env_var(n) for n in AUTH_VARS}}
    env.update({env_var("data_dir"): str(data), env_var("http_port"): str(port),
                env_var("worker_metrics_port"): "0", env_var("web_metrics_port"): "0",
                env_var("worker_id"): f"devrun-{port}",
                env_var("topic_prefix"): f"devrun{port}", "PYTHONUNBUFFERED": "1"})
    out = data / "run.out"
    with open(out, "wb") as f:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "run"], env=env,
                                   stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        token = None
        while token is None:
            assert process.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            for line in out.read_text(errors="replace").splitlines():
                if line.strip().startswith("export TOKEN='"):
                    token = line.strip().removeprefix("export TOKEN='").rstrip("'")
            time.sleep(0.2)
        assert '-H "Authorization: Bearer $TOKEN"' in out.read_text()
        while True:  # the banner follows a port probe; make sure it is the web server answering
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", token, data
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        sys.stderr.write(f"\n--- tail of sluice run ---\n{out.read_text(errors='replace')[-3000:]}\n")
        shutil.rmtree(data, ignore_errors=True)


async def test_the_dev_token_printed_by_sluice_run_works_and_a_forged_one_does_not(
    dev_run: tuple[str, str, Path], db: asyncpg.Pool
) -> None:
    base, token, data = dev_run
    assert (data / "auth" / "dev-signing-key.pem").stat().st_mode & 0o777 == 0o600
    async with aiohttp.ClientSession(base) as client:
        async with client.post(BULK, params={"target": "sensor_readings"}, headers={
                **NDJSON, **bearer(token)}, data=ndjson([reading("devrun", 1)])) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["job_id"]
        async with client.get(f"{BULK}/{job_id}", headers=bearer(token)) as r:
            assert r.status == 200
        async with client.delete(f"{BULK}/{job_id}", headers=bearer(token)) as r:
            assert r.status in (202, 409)  # aborted, or already done by its worker
        claims = jwt.decode(token, options={"verify_signature": False})
        forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                            headers={"kid": jwt.get_unverified_header(token)["kid"]})
        async with client.get(f"{BULK}/{job_id}", headers=bearer(forged)) as r:
            assert r.status == 401
    # nothing left pending to hold up the session's backpressure check
    assert await db.fetchval("SELECT state FROM sluice_jobs WHERE job_id = $1", job_id) in (
        "aborted", "completed")


# --- audit --------------------------------------------------------------------------

async def test_each_bulk_operation_has_audit_lines_without_record_contents(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    from tests.integration.helpers import wait_terminal

    secret_value = f"payload-secret-{uuid.uuid4().hex}"
    accepted = await submit(http, ndjson([reading(secret_value, i) for i in range(3)]))
    await wait_terminal(http, accepted["job_id"])

    def audit_lines(log_name: str) -> list[dict[str, Any]]:
        text = (stack.data / log_name).read_text(errors="replace")
        assert secret_value not in text  # record contents never reach the logs
        lines = []
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a library's own output, not one of ours
            if isinstance(line, dict) and line.get("audit") and line.get("job_id") == accepted["job_id"]:
                lines.append(line)
        return lines

    (submitted,) = audit_lines("web.log")
    assert submitted["msg"] == "bulk operation accepted"
    assert (submitted["subject"], submitted["tenant"], submitted["records"]) == ("dev", "dev", 3)
    assert (submitted["target"], submitted["operation"]) == ("sensor_readings", "insert")
    finished: list[dict[str, Any]] = []
    for _ in range(150):  # the report agent logs once the last results message is in
        if finished := audit_lines("worker.log"):
            break
        await asyncio.sleep(0.2)
    assert [f["msg"] for f in finished] == ["bulk operation finished"]
    assert (finished[0]["subject"], finished[0]["tenant"]) == ("dev", "dev")
    assert finished[0]["counts"] == {"succeeded": 3, "failed": 0, "duplicates": 0, "aborted": 0}
