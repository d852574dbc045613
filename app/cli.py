"""The `sluice` command: run the whole stack, or one worker or web process, or the benchmark;
and, as a client of the API, submit files and follow, list and read jobs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import subprocess
import sys
import time

from app import logs
from app.settings import LOOPBACK_HOSTS, Settings, env_var, get_settings

log = logging.getLogger("sluice")

DEV_INPUT_OPERATIONS = "*=insert,upsert,delete"
"""What `sluice run`'s input topics accept unless SLUICE_INPUT_OPERATIONS says otherwise."""
FIRST_RECORD = '{"sensor_id":"s1","value":1.5,"sampled_at":"2023-10-01T12:00:00Z"}'
"""The record `sluice run` suggests submitting first."""


def run_worker(_: argparse.Namespace) -> int:
    """One Faust worker process: the records consumer, the forwarder and the worker's services."""
    import faust

    from agents import (  # noqa: F401
        deliver_webhooks,
        forward_producer_records,
        maintain_results,
        publish_reports,
    )
    from agents.apply import consumer  # noqa: F401
    from app import event_loop
    from app.faust_app import app

    logs.configure(get_settings().log_level, get_settings().library_log_level,
                   get_settings().log_format)
    event_loop.install()
    os.nice(get_settings().worker_nice)
    worker = faust.Worker(app, loglevel="WARNING", override_logging=False, quiet=True)
    worker.execute_from_commandline()
    return 0


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS 1.3 only when a certificate is configured; None means plain HTTP (loopback only)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def run_web(_: argparse.Namespace) -> int:
    """One HTTP ingress process."""
    from aiohttp import web

    from app import event_loop
    from web.app import create_web_app

    logs.configure(get_settings().log_level, get_settings().library_log_level,
                   get_settings().log_format)
    event_loop.install()
    settings = get_settings()
    app = create_web_app(settings)  # refuses to start without authentication or TLS set up
    web.run_app(app, host=settings.http_host, port=settings.http_port,
                ssl_context=server_tls_context(settings), access_log=None, print=None,
                # Decompression is ours: bounded per chunk, counted against the body limit.
                auto_decompress=False)
    return 0


def _spawn(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "app.cli", command], env=env)


def _local_auth(settings: Settings) -> tuple[dict[str, str], str | None]:
    """(env for the children, a dev token) — the dev key unless an identity provider is set."""
    from app.devtools.devauth import dev_environment, dev_token, ensure_dev_auth

    if settings.auth_jwks_file or settings.auth_jwks_url:
        return {}, None  # real keys configured: the children read them from the environment
    dev = ensure_dev_auth(settings.data_dir)
    return dev_environment(dev, settings.access_policy_file), dev_token(dev, settings)


def _ops_line(settings: Settings, worker_ports: list[int]) -> str:
    """Where the stack's operational endpoints are (metrics have ports of their own)."""
    host = settings.http_host if settings.http_host != "::1" else "[::1]"
    ports = [("web", settings.web_metrics_port), *(("worker", p) for p in worker_ports)]
    served = [f"http://{host}:{port}/metrics ({who})" for who, port in ports if port]
    return ("  readiness: /readyz   metrics: " + ", ".join(served or ["off"]) + "\n")


def _grpc_line(settings: Settings, taken: bool) -> str:
    """Where the web process serves gRPC BulkIngest (README, gRPC), or why it does not."""
    if not settings.grpc_port:
        return "  gRPC: off (SLUICE_GRPC_PORT=0)\n"
    host = settings.http_host if ":" not in settings.http_host else f"[{settings.http_host}]"
    if taken:
        return (f"  gRPC: NOT served, port {settings.grpc_port} is already in use (another "
                "`sluice run`?); set SLUICE_GRPC_PORT\n")
    return (f"  gRPC: {host}:{settings.grpc_port} ({'TLS' if settings.tls_enabled else 'plaintext'}), "
            "service sluice.v1.BulkIngest (web/grpc/bulk_ingest.proto), token in `authorization`\n")


def run_all(args: argparse.Namespace) -> int:
    """Embedded services (unless configured), topics, tables, a worker and the web server."""
    from app.devtools.embedded import (
        EmbeddedStack,
        child_environment,
        free_port,
        port_taken,
        stop_processes,
        wait_for_port,
    )
    from app.kafka import all_topics, ensure_topics
    from app.topics import TopicNames
    from schemas.targets import load_targets

    logs.configure(get_settings().log_level, get_settings().library_log_level,
                   get_settings().log_format)
    settings = get_settings()
    if not settings.tls_enabled and settings.http_host not in LOOPBACK_HOSTS:
        raise SystemExit(f"sluice run serves plain HTTP on loopback only, not on {settings.http_host}; "
                         "set SLUICE_TLS_CERT_FILE and SLUICE_TLS_KEY_FILE to listen elsewhere")
    if port_taken(settings.http_host, settings.http_port):
        # Checked first: the readiness wait below would otherwise find the other server and
        # report this one up while its web process has failed to bind.
        raise SystemExit(f"port {settings.http_port} on {settings.http_host} is already in use "
                         "(another `sluice run`?); stop it or set SLUICE_HTTP_PORT")
    # Not fatal: the web process then serves HTTP alone (web/grpc/server.py); the banner says so.
    grpc_taken = bool(settings.grpc_port) and port_taken(settings.http_host, settings.grpc_port)
    stack = EmbeddedStack(
        data_dir=settings.data_dir,
        kafka_bootstrap=settings.kafka_bootstrap,
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
        broker=settings.broker,
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
        auth_env, token = _local_auth(settings)
        env.update(auth_env)
        # Like the dev policy, which grants the dev role everything: the README's producer
        # example upserts. A deployment's input topics take inserts only unless configured.
        env.setdefault(env_var("input_operations"), DEV_INPUT_OPERATIONS)
        targets = sorted(load_targets(settings.targets_dir))
        asyncio.run(ensure_topics(env[env_var("kafka_bootstrap")],
                                  all_topics(TopicNames(settings.topic_prefix), targets),
                                  settings.partitions))
        worker_ports = [settings.worker_metrics_port]
        children.append(_spawn("worker", env))
        for _ in range(settings.local_workers - 1):
            # The same group (worker id): they share the partitions. Metrics on a port each.
            port = free_port() if settings.worker_metrics_port else 0
            worker_ports.append(port)
            children.append(_spawn("worker", {**env, env_var("worker_metrics_port"): str(port)}))
        children.append(_spawn("web", env))
        wait_for_port(settings.http_port, timeout=60)
        scheme = "https" if settings.tls_enabled else "http"
        base = f"{scheme}://{settings.http_host}:{settings.http_port}"
        token_line = (
            f"  export TOKEN='{token}'\n"
            f"  (a dev token, valid {min(3600, settings.auth_max_token_lifetime_s) // 60} min; "
            "`sluice token --sub NAME --tenant T --scope bulk:write --role dev` mints more)\n\n"
            if token else "  export TOKEN=...   (a token from your identity provider)\n\n"
        )
        print(
            f"\nSluice is up on {base}  (Ctrl-C stops everything)\n\n"
            f"{token_line}"
            f"  curl -si -X POST '{base}/v1/bulk-operations?target=sensor_readings&operation=insert' \\\n"
            f"       -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/x-ndjson' \\\n"
            f"       --data-binary $'{FIRST_RECORD}\\n'\n"
            f"  curl -s -H \"Authorization: Bearer $TOKEN\" {base}/v1/bulk-operations/JOB_ID\n"
            f"  curl -s -H \"Authorization: Bearer $TOKEN\" {base}/v1/bulk-operations/JOB_ID/results\n\n"
            f"  Kafka bootstrap: {env[env_var('kafka_bootstrap')]}   targets: {', '.join(targets)}\n"
            f"{_grpc_line(settings, grpc_taken)}"
            f"{_ops_line(settings, worker_ports)}",
            flush=True,
        )
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        stop_processes(children)
        stack.stop()
        print("stopped", flush=True)


def run_token(args: argparse.Namespace) -> int:
    """Mint a token with the local dev key; refused for any other key set."""
    from app.devtools.devauth import DevAuthError, local_dev_auth, mint_token

    settings = get_settings()
    ttl = args.ttl if args.ttl is not None else settings.auth_max_token_lifetime_s
    if not 0 < ttl <= settings.auth_max_token_lifetime_s:
        print(f"--ttl must be between 1 and {settings.auth_max_token_lifetime_s} s "
              "(SLUICE_AUTH_MAX_TOKEN_LIFETIME_S)", file=sys.stderr)
        return 2
    try:
        dev = local_dev_auth(settings)
    except DevAuthError as e:
        print(f"sluice token: {e}", file=sys.stderr)
        return 1
    print(mint_token(dev, subject=args.sub, tenant=args.tenant, scopes=args.scope or [],
                     roles=args.role or [], ttl_s=ttl, tenant_claim=settings.auth_tenant_claim,
                     roles_claim=settings.auth_roles_claim))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """End-to-end throughput on a stack of its own, beside a raw COPY baseline."""
    from app.devtools.bench.main import main as bench_main

    logs.configure("WARNING", get_settings().library_log_level, get_settings().log_format)
    return bench_main(args)


def run_openapi(args: argparse.Namespace) -> int:
    """Print the API's OpenAPI 3.1 document (the repository keeps it as web/openapi.json)."""
    from web.openapi import openapi_json

    sys.stdout.buffer.write(openapi_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sluice` console script."""
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start everything (embedded services unless configured)")
    sub.add_parser("worker", help="start one stream-processing worker")
    sub.add_parser("web", help="start one HTTP ingress process")
    from app.devtools.bench.main import add_arguments

    add_arguments(sub.add_parser(
        "bench", help="measure throughput on a stack of its own (no `sluice run` needed)"))
    token = sub.add_parser("token", help="mint a token with the local dev key (`sluice run`'s)")
    token.add_argument("--sub", required=True, help="subject (the principal's name)")
    token.add_argument("--tenant", required=True)
    token.add_argument("--scope", action="append", choices=["bulk:write", "bulk:read", "ops:read"],
                       help="repeatable; none by default")
    token.add_argument("--role", action="append",
                       help="repeatable; the dev policy grants everything to role 'dev'")
    token.add_argument("--ttl", type=int, default=None, help="seconds (default: the maximum lifetime)")
    sub.add_parser("openapi", help="print the HTTP API's OpenAPI 3.1 document")
    from app.client.commands import CLIENT_COMMANDS, add_client_commands, run_client_command

    add_client_commands(sub)
    args = parser.parse_args(argv)
    handlers = {"run": run_all, "worker": run_worker, "web": run_web, "bench": run_bench,
                "token": run_token, "openapi": run_openapi,
                **dict.fromkeys(CLIENT_COMMANDS, run_client_command)}
    return handlers[args.command](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
