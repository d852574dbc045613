"""Pure parts of the benchmark: generated readings, Prometheus scrapes, stage deltas."""

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
