"""The gRPC server of a web process: grpc.aio on the web's own event loop, so that Submit and
Watch share its pool, producer, Redis client, admission counts and job event hub; started
after the web's resources and stopped before them (an aiohttp cleanup context)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

import grpc
from aiohttp import web

from app.settings import Settings
from web.grpc import bulk_ingest_pb2_grpc
from web.grpc.service import BulkIngestService

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 4 * 1024 * 1024
"""Records bytes one SubmitRequest may carry (gRPC's usual message limit) when a record is
never larger: records span messages, so a client never needs more."""
HEADER_SLACK_BYTES: Final = 16 * 1024
"""Room for a message's own fields beside its bytes (the header: target, key, retry_of)."""
STOP_GRACE_S: Final = 5.0
"""How long calls in progress are given to finish when the web process stops."""


def max_message_bytes(settings: Settings) -> int:
    """The largest SubmitRequest accepted: one chunk of records, or one record whole when
    records may be larger, never more than the whole body limit (plus the message's fields)."""
    return min(settings.max_body_bytes, max(CHUNK_BYTES, settings.max_record_bytes)) + HEADER_SLACK_BYTES


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The HTTP side's certificate and key, or None for plaintext (loopback only, as HTTP)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])


def listen_address(settings: Settings) -> str:
    """host:port of the gRPC server (an IPv6 host in brackets)."""
    host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host
    return f"{host}:{settings.grpc_port}"


def grpc_server(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context serving BulkIngest on SLUICE_GRPC_PORT (nothing when it is 0)."""

    async def serve(app: web.Application) -> AsyncIterator[None]:
        if not settings.grpc_port:
            yield
            return
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_message_bytes(settings)),
            # A second process on the port must fail, as with HTTP, not share its calls.
            ("grpc.so_reuseport", 0),
        ])
        # Generated, untyped: it registers Submit and Watch under /sluice.v1.BulkIngest/.
        bulk_ingest_pb2_grpc.add_BulkIngestServicer_to_server(  # type: ignore[no-untyped-call]
            BulkIngestService(app), server)
        address = listen_address(settings)
        credentials = server_credentials(settings)
        try:
            bound = (server.add_insecure_port(address) if credentials is None
                     else server.add_secure_port(address, credentials))
        except RuntimeError:
            bound = 0
        if not bound:
            # As for the metrics port: HTTP is served all the same, and the line says why
            # gRPC is not (`sluice run` checks the port before it starts anything).
            log.error("gRPC not served: cannot listen on %s (port taken?); set SLUICE_GRPC_PORT "
                      "(0: no gRPC)", address, extra={"address": address, "alert": "grpc_not_served"})
            yield
            return
        await server.start()
        log.info("gRPC listening", extra={"address": address, "tls": credentials is not None})
        try:
            yield
        finally:
            await server.stop(STOP_GRACE_S)

    return serve
