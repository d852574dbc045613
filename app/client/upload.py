"""A file streamed as a request body: its media type from its name, compressed on the way
when asked, read a chunk at a time so that memory does not grow with the file, and
counted as it goes so that a progress bar can follow it.
"""

from __future__ import annotations

import asyncio
import enum
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import brotli

from app.errors import SluiceError

try:  # Python 3.14's own module; the backport of it before that
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

CHUNK_BYTES = 256 * 1024

_BY_SUFFIX = {".ndjson": "application/x-ndjson", ".jsonl": "application/x-ndjson",
              ".json": "application/json", ".csv": "text/csv", ".avro": "application/avro",
              ".pb": "application/x-protobuf", ".binpb": "application/x-protobuf"}
FORMATS = {"ndjson": "application/x-ndjson", "json": "application/json", "csv": "text/csv",
           "protobuf": "application/x-protobuf", "avro": "application/avro"}


class Compression(enum.StrEnum):
    """How the body is encoded on the wire (its Content-Encoding)."""

    NONE = "none"
    GZIP = "gzip"
    BROTLI = "br"
    ZSTD = "zstd"


class _Packer(Protocol):
    def pack(self, data: bytes) -> bytes: ...
    def end(self) -> bytes: ...


class _Gzip:
    def __init__(self) -> None:
        self._zlib = zlib.compressobj(6, zlib.DEFLATED, 31)

    def pack(self, data: bytes) -> bytes:
        return self._zlib.compress(data)

    def end(self) -> bytes:
        return self._zlib.flush()


class _Brotli:
    def __init__(self) -> None:
        self._brotli = brotli.Compressor(quality=5)  # 11 would cost the upload its speed

    def pack(self, data: bytes) -> bytes:
        return bytes(self._brotli.process(data))

    def end(self) -> bytes:
        return bytes(self._brotli.finish())


class _Zstd:
    def __init__(self) -> None:
        self._zstd = zstd.ZstdCompressor()

    def pack(self, data: bytes) -> bytes:
        return bytes(self._zstd.compress(data))

    def end(self) -> bytes:
        return bytes(self._zstd.flush())


_PACKERS: dict[Compression, Callable[[], _Packer]] = {
    Compression.GZIP: _Gzip, Compression.BROTLI: _Brotli, Compression.ZSTD: _Zstd}


@dataclass(frozen=True, slots=True)
class Upload:
    """What to send and how to label it."""

    path: Path
    content_type: str
    content_encoding: str | None
    compress: Compression
    """Compressed here, while read; NONE for a file sent as it is (``.gz`` files included)."""

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def plan_upload(path: Path, fmt: str | None, compress: Compression) -> Upload:
    """The upload of ``path``: format from ``fmt`` or the file's suffix (``.gz`` after it
    means the file is gzip already, sent as it is with ``Content-Encoding: gzip``)."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    content_type = FORMATS.get(fmt or "") or (_BY_SUFFIX.get(suffixes[-1]) if suffixes else None)
    if content_type is None:
        raise SluiceError(f"cannot tell the format of {path.name}: name it .ndjson, .jsonl, "
                          ".json, .csv, .pb (length-delimited Protobuf) or .avro, or give --format")
    if gzipped and compress is not Compression.NONE:
        raise SluiceError(f"{path.name} is gzip already: leave out --compress")
    if gzipped:
        return Upload(path, content_type, "gzip", Compression.NONE)
    encoding = None if compress is Compression.NONE else compress.value
    return Upload(path, content_type, encoding, compress)


async def body_of(upload: Upload, sent: Callable[[int], None]) -> AsyncIterator[bytes]:
    """The body, a chunk at a time; ``sent`` is told how many bytes of the file each chunk
    took (file bytes, not wire bytes, so that the bar ends at the file's size)."""
    packer = _PACKERS[upload.compress]() if upload.compress is not Compression.NONE else None
    with upload.path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
            sent(len(chunk))
            if packer is None:
                yield chunk
            elif packed := packer.pack(chunk):
                yield packed
    if packer is not None:
        yield packer.end()
