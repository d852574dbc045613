"""Bodies in gzip, Brotli and Zstandard: the same records whatever the chunking, members
or frames back to back, corrupt or cut bodies refused (400), and bombs stopped at the
body limit after one bounded step (413) without inflating them."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterable

import brotli
import pytest

from web.payloads import PayloadError, PayloadReader
from web.payloads.encodings import ContentEncoding, decoder_for
from web.payloads.media import MediaType

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

BODY = b"".join(b'{"sensor_id": "s-%d", "value": %d.5}\n' % (i, i) for i in range(5000))
Compress = Callable[[bytes], bytes]
CODECS: dict[str, Compress] = {
    "gzip": gzip.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}


async def _pieces(body: bytes, size: int | None) -> AsyncIterator[bytes]:
    if size is None:
        yield body
        return
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def _count(body: bytes, encoding: str, size: int | None = None) -> int:
    reader = PayloadReader(_pieces(body, size), MediaType.NDJSON, content_encoding=encoding,
                           max_bytes=1 << 30)
    return len([record async for record in reader.records()])


@pytest.mark.parametrize("size", [None, 1, 7, 4096])
@pytest.mark.parametrize("encoding", sorted(CODECS))
async def test_every_record_comes_through_whatever_the_chunking(encoding: str, size: int | None) -> None:
    assert await _count(CODECS[encoding](BODY), encoding, size) == 5000


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])  # a Brotli stream is one stream
async def test_members_and_frames_back_to_back_are_one_body(encoding: str) -> None:
    half = len(BODY) // 2
    body = CODECS[encoding](BODY[:half]) + CODECS[encoding](BODY[half:])
    assert await _count(body, encoding, 1000) == 5000


@pytest.mark.parametrize("encoding", sorted(CODECS))
async def test_an_empty_body_has_no_records(encoding: str) -> None:
    assert await _count(b"", encoding) == 0
    assert await _count(CODECS[encoding](b""), encoding) == 0


def _flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]


@pytest.mark.parametrize("encoding", sorted(CODECS))
@pytest.mark.parametrize("spoil", [
    lambda data: b"plainly not compressed " + data,
    _flipped,  # may read as a stream cut short, or as no stream at all
    lambda data: data[: len(data) // 2],
    lambda data: data + b"trailing junk",
])
async def test_a_corrupt_or_cut_body_is_400(encoding: str, spoil: Callable[[bytes], bytes]) -> None:
    with pytest.raises(PayloadError) as refused:
        await _count(spoil(CODECS[encoding](BODY)), encoding, 997)
    assert refused.value.status == 400
    assert "not valid" in refused.value.detail or "truncated" in refused.value.detail


def _zeros(compressor: Callable[[], object], feed: str, end: str) -> bytes:
    """256 MiB of zeros, compressed a mebibyte at a time."""
    packer = compressor()
    block = bytes(1 << 20)
    parts: Iterable[bytes] = (getattr(packer, feed)(block) for _ in range(256))
    return b"".join(parts) + getattr(packer, end)()


BOMBS = {
    "gzip": lambda: _zeros(lambda: zlib.compressobj(9, zlib.DEFLATED, 31), "compress", "flush"),
    "br": lambda: _zeros(lambda: brotli.Compressor(quality=5), "process", "finish"),
    "zstd": lambda: _zeros(zstd.ZstdCompressor, "compress", "flush"),
}


@pytest.mark.parametrize("encoding", sorted(BOMBS))
async def test_a_bomb_is_413_after_one_bounded_step(encoding: str) -> None:
    bomb = BOMBS[encoding]()
    assert len(bomb) < 1 << 20  # 256 MiB of zeros in well under 1 MiB
    limit = 1 << 20
    reader = PayloadReader(_pieces(bomb, None), MediaType.NDJSON, content_encoding=encoding,
                           max_bytes=limit)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError) as caught:
            _ = [r async for r in reader.records()]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert limit < reader.bytes_read <= limit + 128 * 1024  # one step past, no more
    assert peak < 4 << 20


def test_the_names_a_client_may_send() -> None:
    assert decoder_for(None) is None and decoder_for(" Identity ") is None
    assert [decoder_for(e).name for e in ("gzip", "x-gzip", "br", "zstd")] == [  # type: ignore[union-attr]
        "gzip", "gzip", "br", "zstd"]
    assert {e.value for e in ContentEncoding} == {"identity", "gzip", "x-gzip", "br", "zstd"}
