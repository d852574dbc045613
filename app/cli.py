"""The `sluice` command: run the whole stack, or one worker or web process, or the benchmark."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

from app import logs
from app.settings import env_var, get_settings

log = logging.getLogger("sluice")

FIRST_RECORD = '{"sensor_id":"s1","value":1.5,"sampled_at":"2023-10-01T12:00:00Z"}'
"""The record `sluice run` suggests submitting first."""


def run_worker(_: argparse.Namespace) -> int:
    """One Faust worker process: all agents, tables and the sink."""
    import faust

    from agents import apply_records, forward_producer_records, report_jobs  # noqa: F401
    from app.faust_app import app
    from tables import record_hashes  # noqa: F401  (its expiry timer)

    logs.configure(get_settings().log_level, get_settings().library_log_level)
    worker = faust.Worker(app, loglevel="WARNING", override_logging=False, quiet=True)
    worker.execute_from_commandline()
    return 0


def run_web(_: argparse.Namespace) -> int:
    """One HTTP ingress process."""
    from aiohttp import web

    from web.app import create_web_app

    logs.configure(get_settings().log_level, get_settings().library_log_level)
    settings = get_settings()
    web.run_app(create_web_app(settings), host=settings.http_host, port=settings.http_port,
                access_log=None, print=None,
                # Decompression is ours: bounded per chunk, counted against the body limit.
                auto_decompress=False)
    return 0


def _spawn(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "app.cli", command], env=env)


def run_all(args: argparse.Namespace) -> int:
    """Embedded services (unless configured), topics, tables, a worker and the web server."""
    from app.embedded import EmbeddedStack, child_environment, wait_for_port
    from app.kafka import all_topics, ensure_topics
    from app.topics import TopicNames
    from schemas.targets import load_targets

    logs.configure(get_settings().log_level, get_settings().library_log_level)
    settings = get_settings()
    stack = EmbeddedStack(
        data_dir=settings.data_dir,
        kafka_bootstrap=settings.kafka_bootstrap,
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
    )
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        env = child_environment(stack.start())
        targets = sorted(load_targets(settings.targets_dir))
        asyncio.run(ensure_topics(env[env_var("kafka_bootstrap")],
                                  all_topics(TopicNames(settings.topic_prefix), targets),
                                  settings.partitions))
        children.append(_spawn("worker", env))
        children.append(_spawn("web", env))
        wait_for_port(settings.http_port, timeout=60)
        base = f"http://{settings.http_host}:{settings.http_port}"
        print(
            f"\nSluice is up on {base}  (Ctrl-C stops everything)\n\n"
            f"  curl -si -X POST '{base}/v1/bulk-operations?target=sensor_readings&operation=insert' \\\n"
            f"       -H 'Content-Type: application/x-ndjson' \\\n"
            f"       --data-binary $'{FIRST_RECORD}\\n'\n"
            f"  curl -s {base}/v1/bulk-operations/JOB_ID\n"
            f"  curl -s {base}/v1/bulk-operations/JOB_ID/results\n\n"
            f"  Kafka bootstrap: {env[env_var('kafka_bootstrap')]}   targets: {', '.join(targets)}\n",
            flush=True,
        )
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        stack.stop()
        print("stopped", flush=True)


def run_bench(args: argparse.Namespace) -> int:
    """End-to-end throughput on a stack of its own, beside a raw COPY baseline."""
    from app.bench.main import main as bench_main

    logs.configure("WARNING", get_settings().library_log_level)
    return bench_main(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sluice` console script."""
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start everything (embedded services unless configured)")
    sub.add_parser("worker", help="start one stream-processing worker")
    sub.add_parser("web", help="start one HTTP ingress process")
    from app.bench.main import add_arguments

    add_arguments(sub.add_parser(
        "bench", help="measure throughput on a stack of its own (no `sluice run` needed)"))
    args = parser.parse_args(argv)
    handlers = {"run": run_all, "worker": run_worker, "web": run_web, "bench": run_bench}
    return handlers[args.command](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
