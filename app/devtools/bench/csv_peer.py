"""Sluice beside pgloader: the same CSV file into the same PostgreSQL, one after the other.

pgloader is what a user would reach for to load a file; the comparison is the one a user
makes: from starting the load to having the rows, pgloader's process against Sluice's
submission (first byte to terminal state). pgloader loads into a fresh scratch table shaped
like the target (so its keys never meet Sluice's); Sluice inserts into the target itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from app.devtools.bench.client import CSV, TARGET, BenchError
from app.devtools.bench.processes import Pipeline
from app.devtools.bench.scenarios import RunFigures, http_run
from app.devtools.bench.workload import csv_body

PGLOADER_TABLE = "sluice_bench_pgloader"
INSTALL_HINT = "apt-get install pgloader"
PGLOADER_TIMEOUT_S = 1800.0
_SOCKET_DIR = re.compile(r"/[A-Za-z0-9/._-]*")
"""What pgloader's URI grammar takes as a socket directory (no ':', no spaces)."""


def pgloader_uri(dsn: str) -> tuple[str, str | None]:
    """pgloader's form of a libpq URI, and the password (for PGPASSWORD, so that it stays out
    of the command file). A unix socket (``?host=/dir``) becomes ``user@unix:/dir:port``."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    user = unquote(parts.username or "postgres")
    dbname = unquote(parts.path.lstrip("/")) or user
    password = unquote(parts.password) if parts.password else None
    if host.startswith("/"):
        if _SOCKET_DIR.fullmatch(host) is None:
            raise BenchError(f"pgloader cannot name the socket directory {host!r} in a URI")
        netloc = f"unix:{host}:{port}"
    else:
        netloc = f"{host or 'localhost'}:{port}"
    options = f"?sslmode={query['sslmode'][0]}" if "sslmode" in query else ""
    return f"postgresql://{user}@{netloc}/{dbname}{options}", password


def pgloader_command(csv_path: Path, uri: str, table: str = PGLOADER_TABLE) -> str:
    """The LOAD CSV command: header row skipped, the three columns by name (the table has
    Sluice's tenant column too, left to its default), pgloader's defaults otherwise (two
    workers, batches of 25,000 rows, optional double quotes)."""
    return (f"LOAD CSV\n"
            f"  FROM '{csv_path}' (sensor_id, value, sampled_at)\n"
            f"  INTO {uri}\n"
            f"  TARGET TABLE {table}\n"
            f"  TARGET COLUMNS (sensor_id, value, sampled_at)\n"
            f"  WITH skip header = 1, fields terminated by ',';\n")


@dataclass(frozen=True, slots=True)
class PgloaderFigures:
    """One pgloader run of the whole file, its rows counted in the table afterwards."""

    records: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        """Rows per second, from starting pgloader to its exit."""
        return self.records / self.seconds


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


async def pgloader_run(pgloader: str, dsn: str, csv_path: Path, records: int,
                       work_dir: Path) -> PgloaderFigures:
    """Load the file with pgloader into a fresh scratch table; BenchError unless every row is
    there (pgloader exits 0 even when it rejected rows)."""
    uri, password = pgloader_uri(dsn)
    command_file = work_dir / "bench.load"
    await asyncio.to_thread(_write, command_file, pgloader_command(csv_path, uri).encode())
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {PGLOADER_TABLE}")
        await conn.execute(f"CREATE TABLE {PGLOADER_TABLE} (LIKE {TARGET} INCLUDING ALL)")
        env = {"PGPASSWORD": password} if password else {}
        log = work_dir / "pgloader.log"
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            pgloader, "--root-dir", str(work_dir / "pgloader"), "--logfile", str(log),
            str(command_file), env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), PGLOADER_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise BenchError(f"pgloader still running after {PGLOADER_TIMEOUT_S:.0f} s") from None
        seconds = time.perf_counter() - started
        loaded = await conn.fetchval(f"SELECT count(*) FROM {PGLOADER_TABLE}")
        if process.returncode != 0 or loaded != records:
            tail = output.decode(errors="replace")[-2000:]
            raise BenchError(f"pgloader exited {process.returncode} with {loaded} of {records} rows "
                             f"loaded:\n{tail}")
        return PgloaderFigures(records, seconds)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {PGLOADER_TABLE}")
        await conn.close()


@dataclass(frozen=True, slots=True)
class CsvFigures:
    """The same file through Sluice and through pgloader (None when pgloader is absent)."""

    records: int
    file_bytes: int
    sluice: RunFigures
    pgloader: PgloaderFigures | None

    @property
    def ratio(self) -> float | None:
        """Sluice's rate over pgloader's."""
        return self.sluice.records_per_s / self.pgloader.records_per_s if self.pgloader else None

    def as_doc(self) -> dict[str, Any]:
        """JSON-ready figures; ``pgloader_missing`` says why there is no pgloader figure."""
        peer = self.pgloader
        return {
            "label": f"CSV, {self.records:,} rows", "records": self.records,
            "file_mb": self.file_bytes / 1e6,
            "sluice": self.sluice.as_doc(f"Sluice, {self.records:,}-row CSV"),
            "pgloader": None if peer is None else {
                "label": f"pgloader, {self.records:,}-row CSV", "records": peer.records,
                "seconds": peer.seconds, "records_per_s": peer.records_per_s},
            "pgloader_missing": None if peer else f"pgloader not installed ({INSTALL_HINT})",
            "ratio": self.ratio,
        }


def find_pgloader(name: str) -> str | None:
    """pgloader's path, or None when it is not installed."""
    return shutil.which(name)


async def csv_run(pipeline: Pipeline, dsn: str, tag: str, records: int, work_dir: Path,
                  pgloader: str | None) -> CsvFigures:
    """Write the CSV file, load it with pgloader (when installed), then submit it to Sluice."""
    body = csv_body(tag, records)
    csv_path = work_dir / "bench.csv"
    await asyncio.to_thread(_write, csv_path, body)
    try:
        peer = (await pgloader_run(pgloader, dsn, csv_path, records, work_dir)
                if pgloader is not None else None)
        sluice = await http_run(pipeline, [(body, records)], content_type=CSV)
    finally:
        csv_path.unlink(missing_ok=True)
    return CsvFigures(records, len(body), sluice, peer)
