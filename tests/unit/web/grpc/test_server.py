"""The gRPC server's address and message limit follow the HTTP side's settings."""

from __future__ import annotations

from app.settings import Settings
from web.grpc.server import CHUNK_BYTES, HEADER_SLACK_BYTES, listen_address, max_message_bytes


def test_the_message_limit_holds_a_chunk_or_a_record_never_more_than_a_body() -> None:
    assert max_message_bytes(Settings()) == CHUNK_BYTES + HEADER_SLACK_BYTES
    big = Settings(max_record_bytes=8 * 1024 * 1024)
    assert max_message_bytes(big) == 8 * 1024 * 1024 + HEADER_SLACK_BYTES
    small = Settings(max_body_bytes=100_000)
    assert max_message_bytes(small) == 100_000 + HEADER_SLACK_BYTES


def test_grpc_listens_on_the_http_host() -> None:
    assert listen_address(Settings(grpc_port=50051)) == "127.0.0.1:50051"
    assert listen_address(Settings(http_host="::1", grpc_port=7000)) == "[::1]:7000"
