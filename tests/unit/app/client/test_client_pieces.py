"""The client commands' pure parts: what a file is sent as, the body it becomes, what a
job's end means for the exit status, and what the summary shows."""

from __future__ import annotations

import asyncio
import gzip
from collections import Counter
from pathlib import Path

import brotli
import pytest
from rich.console import Console

from app.client.commands import ExitStatus, exit_status
from app.client.display import settled, summary_table
from app.client.upload import Compression, body_of, plan_upload
from app.errors import SluiceError
from schemas.vocabulary import JobState

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]


@pytest.mark.parametrize(("name", "fmt", "content_type", "encoding"), [
    ("a.ndjson", None, "application/x-ndjson", None),
    ("a.JSONL", None, "application/x-ndjson", None),
    ("a.json", None, "application/json", None),
    ("a.csv", None, "text/csv", None),
    ("a.csv.gz", None, "text/csv", "gzip"),
    ("a.data", "ndjson", "application/x-ndjson", None),
    ("a.data.gz", "csv", "text/csv", "gzip"),
    ("a.pb", None, "application/x-protobuf", None),
    ("a.avro", None, "application/avro", None),
    ("a.data", "protobuf", "application/x-protobuf", None),
])
def test_the_format_comes_from_the_name_or_format(
    name: str, fmt: str | None, content_type: str, encoding: str | None
) -> None:
    upload = plan_upload(Path(name), fmt, Compression.NONE)
    assert (upload.content_type, upload.content_encoding, upload.compress) == (
        content_type, encoding, Compression.NONE)


def test_a_name_that_says_nothing_is_refused_and_gzip_is_not_compressed_twice() -> None:
    with pytest.raises(SluiceError, match="--format"):
        plan_upload(Path("records.txt"), None, Compression.NONE)
    with pytest.raises(SluiceError, match="gzip already"):
        plan_upload(Path("a.ndjson.gz"), None, Compression.GZIP)
    assert plan_upload(Path("a.ndjson"), None, Compression.GZIP).content_encoding == "gzip"


def _body(path: Path, compress: Compression) -> tuple[bytes, int]:
    sent: list[int] = []

    async def collect() -> bytes:
        upload = plan_upload(path, None, compress)
        return b"".join([chunk async for chunk in body_of(upload, sent.append)])

    return asyncio.run(collect()), sum(sent)


def test_the_body_is_the_file_compressed_or_not_and_counted_in_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson"
    content = b"".join(b'{"n": %d}\n' % i for i in range(100_000))  # > several chunks
    path.write_bytes(content)
    plain, counted = _body(path, Compression.NONE)
    assert plain == content and counted == len(content)
    for compress, unpack in ((Compression.GZIP, gzip.decompress),
                             (Compression.BROTLI, brotli.decompress),
                             (Compression.ZSTD, zstd.decompress)):
        packed, counted = _body(path, compress)
        assert unpack(packed) == content and counted == len(content)
        assert len(packed) < len(content) / 4


@pytest.mark.parametrize(("state", "status"), [
    (JobState.COMPLETED, ExitStatus.OK),
    (JobState.COMPLETED_WITH_ERRORS, ExitStatus.COMPLETED_WITH_ERRORS),
    (JobState.FAILED, ExitStatus.FAILED), (JobState.ABORTED, ExitStatus.FAILED),
])
def test_the_exit_status_says_how_the_job_ended(state: JobState, status: ExitStatus) -> None:
    assert exit_status(state) is status


def test_the_summary_shows_every_count_and_the_failures_by_code() -> None:
    job = {"job_id": "j-1", "state": "completed_with_errors", "reason": None,
           "counts": {"received": 1010, "succeeded": 990, "failed": 15, "duplicates": 5,
                      "aborted": 0}}
    assert settled(job["counts"]) == 1010  # type: ignore[arg-type]
    console = Console(width=100, record=True)
    console.print(summary_table(job, Counter({"invalid_timestamp": 10, "23505": 5})))
    text = console.export_text()
    for expected in ("completed_with_errors", "j-1", "1,010", "990", "invalid_timestamp", "23505"):
        assert expected in text
    assert "aborted" not in text  # shown only when some were
    assert text.index("invalid_timestamp") < text.index("23505")  # most frequent first
