"""Regenerates web/grpc's Python stubs from bulk_ingest.proto with grpcio-tools' protoc.

The stubs are committed (the service imports them; grpcio-tools is a dev dependency only),
and tests/unit/web/grpc/test_stubs.py fails when they no longer match the .proto. After
editing the .proto, run ``python -m app.devtools.grpc_stubs`` and commit what it writes.
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Final

import web.grpc

PROTO: Final = Path(web.grpc.__file__).with_name("bulk_ingest.proto")
ROOT: Final = PROTO.parents[2]
"""The import root: the stubs import each other as ``web.grpc.…``, so protoc sees the .proto
by its path from here."""
STUB_NAMES: Final = ("bulk_ingest_pb2.py", "bulk_ingest_pb2.pyi", "bulk_ingest_pb2_grpc.py")


class StubsError(Exception):
    """protoc is missing or refused the .proto."""


def generate(out: Path) -> dict[str, bytes]:
    """Run protoc into ``out``; the stubs it wrote, by file name."""
    try:
        from grpc_tools import protoc
    except ImportError as e:
        raise StubsError("grpcio-tools is needed to generate the stubs: "
                         "pip install -c constraints.txt 'grpcio-tools'") from e
    well_known = resources.files("grpc_tools") / "_proto"
    proto = PROTO.relative_to(ROOT)
    status = protoc.main([
        "grpc_tools.protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={out}",
        f"--pyi_out={out}", f"--grpc_python_out={out}", str(proto)])
    if status != 0:
        raise StubsError(f"protoc failed on {proto} (exit status {status})")
    folder = out / proto.parent
    return {name: (folder / name).read_bytes() for name in STUB_NAMES}


def stale_stubs() -> list[str]:
    """The committed stubs that differ from freshly generated ones (missing ones included)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    folder = PROTO.parent
    return [name for name, data in fresh.items()
            if not (folder / name).is_file() or (folder / name).read_bytes() != data]


def main() -> int:
    """Write fresh stubs beside the .proto."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    for name, data in fresh.items():
        (PROTO.parent / name).write_bytes(data)
        print(f"wrote {PROTO.parent / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
