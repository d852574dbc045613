"""Content-Encodings of a request body: gzip, Brotli (``br``) and Zstandard (``zstd``),
each decoded a bounded step at a time.

A decoder is given the bytes that arrived and an allowance, and returns at most about
that much output; what it could not return yet stays inside it until asked again. So a
decompression bomb is caught by the body limit after one step, whatever its ratio, and a
body is never held whole.
"""

from __future__ import annotations

import enum
import zlib
from typing import Final, Protocol

import brotli

try:  # Python 3.14's own module; the backport of it before that
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

from web.echo import echo
from web.payloads.records import PayloadError

_GZIP_WBITS: Final = 31  # 16 + 15: gzip header and trailer, 32 KiB window


class ContentEncoding(enum.StrEnum):
    """The Content-Encoding values a body may carry."""

    IDENTITY = "identity"
    GZIP = "gzip"
    X_GZIP = "x-gzip"
    BROTLI = "br"
    ZSTD = "zstd"


CONTENT_ENCODINGS: Final = tuple(encoding.value for encoding in ContentEncoding)


class BodyDecoder(Protocol):
    """One body's decompression, a bounded step at a time."""

    name: str

    def step(self, data: bytes, limit: int) -> bytes:
        """Take ``data`` (may be empty) and return at most about ``limit`` bytes of output."""

    @property
    def wants_input(self) -> bool:
        """True once the input given so far has yielded all its output."""

    @property
    def finished(self) -> bool:
        """True when the body ended where its encoding says it ends (not truncated)."""


class GzipDecoder:
    """RFC 1952, with members back to back as it allows."""

    name = "gzip"

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        self._tail = b""
        self._full = False

    def step(self, data: bytes, limit: int) -> bytes:
        data = self._tail + data if self._tail else data
        if self._inflater.eof and data:
            self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        try:
            piece = self._inflater.decompress(data, limit)
        except zlib.error:
            raise PayloadError(400, "the body is not valid gzip") from None
        self._tail = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
        self._full = len(piece) >= limit  # zlib may hold more output for this input
        return piece

    @property
    def wants_input(self) -> bool:
        return not self._tail and (self._inflater.eof or not self._full)

    @property
    def finished(self) -> bool:
        return self._inflater.eof and not self._tail


class BrotliDecoder:
    """RFC 7932: one stream (Brotli has no members back to back). It takes new input only
    once it has given all the output of the last."""

    name = "br"

    def __init__(self) -> None:
        self._decoder = brotli.Decompressor()
        self._pending: list[bytes] = []
        self._full = False

    def step(self, data: bytes, limit: int) -> bytes:
        if data:
            self._pending.append(data)
        feed = b""
        if self._pending and self._decoder.can_accept_more_data():
            feed = b"".join(self._pending)
            self._pending.clear()
        try:
            piece = bytes(self._decoder.process(feed, output_buffer_limit=limit))
        except brotli.error:
            raise PayloadError(400, "the body is not valid Brotli") from None
        # A full buffer may leave output inside, even where it says it accepts more input.
        self._full = len(piece) >= limit
        return piece

    @property
    def wants_input(self) -> bool:
        return not self._pending and not self._full and self._decoder.can_accept_more_data()

    @property
    def finished(self) -> bool:
        return bool(self._decoder.is_finished()) and not self._pending


class ZstdDecoder:
    """RFC 8878, with frames back to back as it allows."""

    name = "zstd"

    def __init__(self) -> None:
        self._decoder = zstd.ZstdDecompressor()
        self._tail = b""

    def step(self, data: bytes, limit: int) -> bytes:
        data = self._tail + data if self._tail else data
        self._tail = b""
        if self._decoder.eof and data:
            self._decoder = zstd.ZstdDecompressor()
        try:
            piece: bytes = self._decoder.decompress(data, max_length=limit)
        except zstd.ZstdError:
            raise PayloadError(400, "the body is not valid Zstandard") from None
        if self._decoder.eof:
            self._tail = self._decoder.unused_data
        return piece

    @property
    def wants_input(self) -> bool:
        return not self._tail and (self._decoder.eof or self._decoder.needs_input)

    @property
    def finished(self) -> bool:
        return bool(self._decoder.eof) and not self._tail


def decoder_for(content_encoding: str | None) -> BodyDecoder | None:
    """The decoder of a Content-Encoding; None for identity; 415 for one not read here."""
    name = (content_encoding or ContentEncoding.IDENTITY).strip().lower()
    if name not in set(ContentEncoding):
        supported = ", ".join(ContentEncoding)
        raise PayloadError(415, f"Content-Encoding {echo(name)} is not supported; use one of {supported}")
    encoding = ContentEncoding(name)
    if encoding is ContentEncoding.IDENTITY:
        return None
    if encoding is ContentEncoding.BROTLI:
        return BrotliDecoder()
    if encoding is ContentEncoding.ZSTD:
        return ZstdDecoder()
    return GzipDecoder()
