"""The committed gRPC stubs are what grpcio-tools makes of bulk_ingest.proto today."""

from __future__ import annotations

from app.devtools.grpc_stubs import PROTO, STUB_NAMES, stale_stubs


def test_the_committed_stubs_match_the_proto() -> None:
    assert all((PROTO.parent / name).is_file() for name in STUB_NAMES)
    assert stale_stubs() == [], "run `python -m app.devtools.grpc_stubs` and commit what it writes"
