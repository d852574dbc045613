"""Pure parts of the benchmark: generated readings (NDJSON, CSV, rows), Prometheus scrapes,
stage deltas."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

BASE = datetime(2024, 1, 1, tzinfo=UTC)
BASE_MS = int(BASE.timestamp() * 1000)
SENSORS = 1000
"""Distinct sensor ids per workload; keys stay distinct through the sampling instant."""

Row = tuple[str, float, datetime]


def reading(tag: str, i: int) -> dict[str, object]:
    """The i-th sensor reading of a workload tagged ``tag``: distinct key, distinct content."""
    return {"sensor_id": f"{tag}-{i % SENSORS}", "value": i * 0.25, "sampled_at": BASE_MS + i}


def ndjson(tag: str, start: int, count: int) -> bytes:
    """Readings start..start+count as an NDJSON body."""
    dumps = orjson.dumps
    return b"".join([dumps(reading(tag, i)) + b"\n" for i in range(start, start + count)])


CSV_HEADER = b"sensor_id,value,sampled_at\n"


def sampled_at_text(i: int) -> str:
    """The i-th reading's instant as RFC 3339 with milliseconds and a zone, a form both
    PostgreSQL (timestamptz input) and Sluice's CSV path accept."""
    return (BASE + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")


def csv_body(tag: str, count: int) -> bytes:
    """The same readings as ``ndjson``'s as CSV with a header row (no field needs quoting)."""
    lines = [f"{tag}-{i % SENSORS},{i * 0.25!r},{sampled_at_text(i)}\n" for i in range(count)]
    return CSV_HEADER + "".join(lines).encode()


def ndjson_of_size(tag: str, size_bytes: int) -> tuple[bytes, int]:
    """An NDJSON body of about ``size_bytes`` (never more) and its record count."""
    parts: list[bytes] = []
    total = records = 0
    step = 50_000
    while True:
        chunk = ndjson(tag, records, step)
        if total + len(chunk) > size_bytes:
            lines = chunk.splitlines(keepends=True)
            for line in lines:
                if total + len(line) > size_bytes:
                    return b"".join(parts), records
                parts.append(line)
                total += len(line)
                records += 1
        parts.append(chunk)
        total += len(chunk)
        records += step


@dataclass(frozen=True, slots=True)
class DirtyMix:
    """Which records of a dirty workload are bad, and how: every kind at its own indexes."""

    invalid_every: int = 100
    """One in this many fails validation (a string where a double belongs): 1 %."""
    existing_every: int = 100
    """One in this many meets a row already there with another value (23505): 1 %."""
    check_every: int = 1000
    """One in this many breaks the run's CHECK (value >= 0): 0.1 %."""

    def kind(self, i: int) -> str | None:
        """'invalid', 'existing', 'check', or None for a clean record."""
        if i % self.invalid_every == 0:
            return "invalid"
        if i % self.existing_every == self.existing_every // 2:
            return "existing"
        if i % self.check_every == 7:
            return "check"
        return None

    def counts(self, count: int) -> dict[str, int]:
        """How many records of each kind among the first ``count``."""
        tally = {"invalid": 0, "existing": 0, "check": 0}
        for i in range(count):
            if (k := self.kind(i)) is not None:
                tally[k] += 1
        return tally


DIRTY_CHECK = "CHECK (value >= 0)"
"""The constraint the dirty run adds to the table; clean readings all satisfy it."""


def dirty_ndjson(tag: str, count: int, mix: DirtyMix = DirtyMix()) -> bytes:
    """Readings like ``ndjson``'s, with the mix's invalid, existing-key and CHECK-breaking records."""
    dumps = orjson.dumps
    lines = []
    for i in range(count):
        record = reading(tag, i)
        kind = mix.kind(i)
        if kind == "invalid":
            record["value"] = "not a number"
        elif kind == "check":
            record["value"] = -1.0
        lines.append(dumps(record) + b"\n")
    return b"".join(lines)


def dirty_existing_rows(tag: str, count: int, mix: DirtyMix = DirtyMix()) -> Iterator[Row]:
    """Rows to load before a dirty run: the 'existing' keys, with another value than the run's."""
    for i in range(count):
        if mix.kind(i) == "existing":
            yield f"{tag}-{i % SENSORS}", i * 0.25 + 1.0, BASE + timedelta(milliseconds=i)


def copy_rows(tag: str, count: int) -> Iterator[Row]:
    """The same readings as rows for a raw COPY."""
    for i in range(count):
        yield f"{tag}-{i % SENSORS}", i * 0.25, BASE + timedelta(milliseconds=i)


def parse_metrics(text: str, names: tuple[str, ...]) -> dict[tuple[str, str], float]:
    """Samples of the named metrics from Prometheus text: {(name, stage label): value}."""
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        if name not in names or not rest:
            continue
        labels, _, value = rest.rpartition("} ")
        stage = dict(
            (k, v.strip('"')) for k, _, v in (p.partition("=") for p in labels.split(","))
        ).get("stage", "")
        samples[(name, stage)] = float(value)
    return samples


@dataclass(frozen=True, slots=True)
class StageFigure:
    """Time spent in one pipeline stage during a run, and the records it handled."""

    stage: str
    seconds: float
    records: float

    @property
    def records_per_s(self) -> float | None:
        """Records per second of time spent in the stage (None without both figures)."""
        return self.records / self.seconds if self.seconds > 0 and self.records > 0 else None


SECONDS = "sluice_stage_seconds_total"
RECORDS = "sluice_stage_records_total"


def stage_deltas(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], order: tuple[str, ...]
) -> list[StageFigure]:
    """What each stage did between two scrapes, in pipeline order."""

    def delta(name: str, stage: str) -> float:
        return after.get((name, stage), 0.0) - before.get((name, stage), 0.0)

    return [StageFigure(s, delta(SECONDS, s), delta(RECORDS, s)) for s in order]
