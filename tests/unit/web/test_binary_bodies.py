"""Protobuf and Avro bodies through PayloadReader: media types, Content-Encoding, body limit."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.errors import SluiceError
from schemas.targets import Target
from tests.unit.web.test_avro_format import _readings, _writer_schema, ocf
from tests.unit.web.test_protobuf_format import delimited, reading
from web.payloads import (
    ConvertedRecord,
    MediaType,
    PayloadError,
    PayloadReader,
    media_type_for,
)
from web.payloads.binary import Framed


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


async def collect(body: bytes, media_type: MediaType, target: Target, chunk: int = 7,
                  **options: Any) -> list[Framed]:
    options.setdefault("max_bytes", 1 << 30)
    reader = PayloadReader(_chunks(body, chunk), media_type, target_schema=target, **options)
    settled = []
    out: list[Framed] = []
    async for batch in reader.batches(on_settled=lambda: settled.append(True)):
        assert settled == [True]  # before the first record
        out.extend(batch)
    return out


def test_the_binary_media_types_and_their_aliases() -> None:
    assert media_type_for("application/x-protobuf") is MediaType.PROTOBUF
    assert media_type_for("application/protobuf; delimited=true") is MediaType.PROTOBUF
    assert media_type_for("application/avro") is MediaType.AVRO


def test_a_binary_body_needs_its_target(targets: dict[str, Target]) -> None:
    for media_type in (MediaType.PROTOBUF, MediaType.AVRO):
        with pytest.raises(SluiceError, match="target_schema"):
            PayloadReader(_chunks(b"", 1), media_type, max_bytes=10)


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_protobuf_through_the_reader(targets: dict[str, Target], encoding: str | None) -> None:
    target = targets["sensor_readings"]
    body = delimited(*(reading(target, i) for i in range(2000)))
    sent = gzip.compress(body) if encoding else body
    records = await collect(sent, MediaType.PROTOBUF, target, content_encoding=encoding)
    assert [r.index for r in records] == list(range(2000))


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_avro_through_the_reader(targets: dict[str, Target], encoding: str | None) -> None:
    target = targets["sensor_readings"]
    body = ocf(_writer_schema(target), _readings(2000), "deflate")
    sent = gzip.compress(body) if encoding else body
    records = await collect(sent, MediaType.AVRO, target, chunk=4096, content_encoding=encoding)
    assert [r.index for r in records] == list(range(2000))


async def test_the_body_limit_counts_decompressed_bytes(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    body = delimited(*(reading(target, i) for i in range(2000)))
    with pytest.raises(PayloadError) as caught:
        await collect(gzip.compress(body), MediaType.PROTOBUF, target, chunk=1024,
                      content_encoding="gzip", max_bytes=len(body) - 1)
    assert caught.value.status == 413


async def test_a_delete_reads_only_the_key(targets: dict[str, Target]) -> None:
    target = targets["sensor_readings"]
    body = ocf(_writer_schema(target), _readings(3))
    records = await collect(body, MediaType.AVRO, target, key_only=True)
    assert all(isinstance(r, ConvertedRecord) and len(r.row) == 2 for r in records)
