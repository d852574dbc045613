"""deploy/nginx.conf run by a real nginx: the file itself passes `nginx -t`, and in front of a
TLS web process it takes a 100 MiB upload over HTTP/2 to 202 while neither nginx (no
temporary file) nor the web process (flat memory) holds the body.

The test runs a copy of the deploy file with only its environment swapped (port, upstream
address, secrets directory): each swap must match the file exactly once, so a change to
those lines fails here instead of leaving the test checking something else.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from app.devtools.embedded import free_port, wait_for_port
from tests.integration.certs import issue, new_authority
from tests.integration.conftest import Stack, bearer, second_web_async, token_for
from tests.integration.helpers import ndjson, reading

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
SECRETS_IN_NGINX = "/etc/nginx/secrets/"
BODY_BYTES = 100 * 1024 * 1024
# The web process may take the whole body (its default limit is exactly 100 MiB).
WEB_MAX_BODY_BYTES = 200 * 1024 * 1024
# Growth of the web process's resident memory over the upload: measured at 9-10 MiB (80 to
# 90 MiB: read buffers, the parser, the Kafka producer's batches). Four times that, to stay
# clear of allocator noise on a loaded machine, still fails a process holding 40% of the body.
RSS_GROWTH_BOUND = 40 * 1024 * 1024
BUFFERED_TO_DISK = "a client request body is buffered to a temporary file"


def require_tool(name: str) -> str:
    """The path of ``name``: skipped, loudly, when it is not installed, and failed instead
    when SLUICE_TEST_REQUIRE_TOOLS is set (as SLUICE_TEST_REQUIRE_KAFKA fails the Kafka lane)."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        message = f"nginx front SKIPPED: {name} is not installed (apt-get install {name})"
        if os.environ.get("SLUICE_TEST_REQUIRE_TOOLS"):
            pytest.fail(message + "; SLUICE_TEST_REQUIRE_TOOLS is set")
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def secrets() -> Iterator[Path]:
    """What deploy/secrets/ holds, by the names the deploy file uses: nginx's certificate
    (for localhost and 127.0.0.1), and web.crt for the name `web` issued by web-ca.crt."""
    directory = Path(tempfile.mkdtemp(prefix="sluice-nginx-secrets-"))
    try:
        ca = new_authority(directory, "web-ca")
        issue(directory, "nginx", ["localhost", "127.0.0.1"], ca)
        issue(directory, "web", ["web"], ca)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """nginx's prefix. Not pytest's tmp_path: nginx's workers run as an unprivileged user
    when started as root and must reach the body temp directory in here."""
    directory = Path(tempfile.mkdtemp(prefix="sluice-nginx-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def configure(directory: Path, *, port: int, web_port: int, secrets: Path) -> Path:
    """A top-level nginx.conf in ``directory`` that includes a copy of deploy/nginx.conf,
    changed only where it names its environment; returns the top-level file."""
    text = DEPLOY_CONF.read_text()
    for old, new in [
        ("listen 443 ", f"listen 127.0.0.1:{port} "),
        ("server web:8080;", f"server 127.0.0.1:{web_port};"),
        *((f"{SECRETS_IN_NGINX}{name};", f"{secrets}/{name};")
          for name in ("nginx.crt", "nginx.key", "web-ca.crt")),
    ]:
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has exactly one {old!r}"
        text = text.replace(old, new)
    assert SECRETS_IN_NGINX not in text, "deploy/nginx.conf reads a secret this test does not provide"
    site = directory / "sluice.conf"
    site.write_text(text)
    top = directory / "nginx.conf"
    # Every path nginx would otherwise take from its build (/var/lib/nginx, /var/log/nginx,
    # /run) in here; the error log at warn, where request bodies buffered to disk are told.
    top.write_text(f"""
daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {site};
}}
""")
    return top


def nginx_command(nginx: str, conf: Path, *flags: str) -> list[str]:
    return [nginx, "-c", str(conf), "-e", str(conf.parent / "error.log"), *flags]


@contextmanager
def running_nginx(nginx: str, conf: Path, port: int) -> Iterator[None]:
    """nginx in the foreground on ``conf``, stopped (master and workers) on exit."""
    with open(conf.parent / "nginx.out", "ab") as out:
        process = subprocess.Popen(nginx_command(nginx, conf), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        try:
            wait_for_port(port, timeout=20)
        except TimeoutError as e:
            raise AssertionError((conf.parent / "error.log").read_text(errors="replace")) from e
        yield
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown, workers included
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def handshake(port: int, cafile: Path, maximum: ssl.TLSVersion) -> tuple[str | None, str | None]:
    """(TLS version, ALPN protocol) that nginx agrees on with a client offering h2 and
    HTTP/1.1 and TLS up to ``maximum``."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.version(), tls.selected_alpn_protocol()


def memory_kb(pid: int, field: str) -> int:
    """One memory figure of a process from /proc (VmRSS: now, VmHWM: its peak so far), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


class Sampler(threading.Thread):
    """The web process's resident memory, every 100 ms while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._stopped = threading.Event()
        self.samples = 0
        self.peak_rss_kb = 0

    def run(self) -> None:
        while not self._stopped.wait(0.1):
            self.samples += 1
            self.peak_rss_kb = max(self.peak_rss_kb, memory_kb(self._pid, "VmRSS"))

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def write_readings(path: Path, tag: str, size: int) -> int:
    """At least ``size`` bytes of distinct sensor readings as NDJSON, written in batches so
    that the test never holds the body; returns how many records."""
    records = 0
    with open(path, "wb") as out:
        while out.tell() < size:
            out.write(ndjson([reading(f"{tag}-{i % 997}", i) for i in range(records, records + 10_000)]))
            records += 10_000
    return records


def test_nginx_accepts_the_deploy_config(secrets: Path, workdir: Path) -> None:
    """Checked by the nginx that runs it, with no warning: a deprecated or ignored directive
    would show here before it does in production."""
    nginx = require_tool("nginx")
    conf = configure(workdir, port=free_port(), web_port=free_port(), secrets=secrets)
    done = subprocess.run(nginx_command(nginx, conf, "-t"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    assert "[warn]" not in done.stderr, done.stderr


async def wait_settled(http: aiohttp.ClientSession, job: str, records: int) -> dict[str, Any]:
    """The job once each of its records has an outcome (succeeded or aborted)."""
    for _ in range(600):
        async with http.get(job) as answer:
            state = await answer.json()
        counts = state["counts"]
        if counts["succeeded"] + counts["aborted"] + counts["failed"] + counts["duplicates"] == records:
            return dict(state)
        await asyncio.sleep(0.2)
    raise AssertionError(f"the job's records never all had an outcome: {state}")


async def test_a_100_mib_upload_streams_over_http2_through_nginx(
    stack: Stack, secrets: Path, workdir: Path
) -> None:
    """Clients get TLS 1.3 only and HTTP/2; curl's upload goes through nginx, and over TLS
    1.3 to a web process verified as `web`, as it arrives: every record reaches Kafka."""
    nginx, curl = require_tool("nginx"), require_tool("curl")
    tag = f"nginx-{uuid.uuid4().hex[:6]}"
    body = workdir / "body.ndjson"
    records = await asyncio.to_thread(write_readings, body, tag, BODY_BYTES)
    # A tenant of its own: its 1.4 million queued records count against no other test's share.
    token = token_for(stack.auth, subject=tag, tenant=tag)
    port = free_port()
    async with second_web_async(stack, workdir / "web.log", tls_cert_file=str(secrets / "web.crt"),
                                tls_key_file=str(secrets / "web.key"),
                                max_body_bytes=str(WEB_MAX_BODY_BYTES), web_metrics_port="0") as web:
        conf = configure(workdir, port=port, web_port=web.port, secrets=secrets)
        with running_nginx(nginx, conf, port):
            assert handshake(port, secrets / "web-ca.crt", ssl.TLSVersion.TLSv1_3) == ("TLSv1.3", "h2")
            with pytest.raises(ssl.SSLError):
                handshake(port, secrets / "web-ca.crt", ssl.TLSVersion.TLSv1_2)
            baseline_kb = memory_kb(web.pid, "VmRSS")
            sampler = Sampler(web.pid)
            sampler.start()
            started = time.monotonic()
            try:
                done = await asyncio.to_thread(subprocess.run, [
                    curl, "--http2", "-sS", "--cacert", str(secrets / "web-ca.crt"),
                    "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/x-ndjson",
                    "--data-binary", f"@{body}", "-o", str(workdir / "answer.json"),
                    "-w", "%{http_version} %{http_code} %{size_upload}",
                    f"https://127.0.0.1:{port}/v1/bulk-operations?target=sensor_readings&operation=insert",
                ], capture_output=True, text=True, timeout=240)
            finally:
                sampler.stop()
            uploaded_s = time.monotonic() - started
            peak_kb = max(sampler.peak_rss_kb, memory_kb(web.pid, "VmHWM"))
    answer = (workdir / "answer.json").read_text(errors="replace")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "202", str(body.stat().st_size)], answer
    print(f"\n100 MiB through nginx in {uploaded_s:.1f} s; web RSS {baseline_kb // 1024} MiB before, "
          f"peak {peak_kb // 1024} MiB ({sampler.samples} samples)")
    assert sampler.samples >= 5, "the upload ended before memory was sampled"
    assert (peak_kb - baseline_kb) * 1024 < RSS_GROWTH_BOUND, (baseline_kb, peak_kb)
    # nginx unlinks a body temp file as it creates it, so only its log tells it wrote one.
    assert BUFFERED_TO_DISK not in (workdir / "error.log").read_text(errors="replace"), \
        "nginx buffered the request body to disk"

    async with aiohttp.ClientSession(stack.base_url, headers=bearer(token)) as http:
        accepted = orjson.loads(answer)
        # Every record came through: the 202 counts them once all are in Kafka. The rest of
        # the job is not nginx's: it is aborted, so that 1.4 million rows do not slow the
        # tests after this one; the records it had written stay, the others are aborted.
        assert accepted["records_received"] == records
        async with http.delete(accepted["links"]["self"]) as aborting:
            assert aborting.status in (202, 409), await aborting.text()
        job = await wait_settled(http, accepted["links"]["self"], records)
    assert job["state"] in ("aborted", "completed"), job
    assert job["counts"]["failed"] == job["counts"]["duplicates"] == 0, job
