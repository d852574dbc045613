"""The benchmark's figures as a table for people (JSON for machines is the same dict)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

STAGE_LABELS = {
    "parse": "parse + validate (web)",
    "produce": "produce envelopes (web)",
    "consume": "consume + decode (worker)",
    "write": "database write (worker)",
    "publish": "publish outcomes (worker)",
    "report": "job reports from the outbox (worker)",
}


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Left-aligned first column, right-aligned figures."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]


def verdict(ok: bool) -> str:
    """How a figure compares with its target."""
    return "met" if ok else "MISSED"


def render(figures: dict[str, Any]) -> str:
    """Every figure of one bench run, as aligned plain-text tables."""
    out = [f"Sluice benchmark, {figures['machine']}", ""]
    runs: list[tuple[str, ...]] = []
    for key in ("single", "dirty", "concurrent", "big"):
        run = figures.get(key)
        if run:
            runs.append((run["label"], _n(run["records"]), f"{run['payload_mb']:.1f}",
                         f"{run['to_202_s']:.2f}", f"{run['total_s']:.2f}", _n(run["records_per_s"])))
    producers = figures.get("producers")
    if producers:
        runs.append((producers["label"], _n(producers["records"]), "-",
                     f"{producers['produce_s']:.2f} (sent)", f"{producers['total_s']:.2f}",
                     _n(producers["records_per_s"])))
    copy = figures.get("copy")
    if copy:
        runs.append((copy["label"], _n(copy["records"]), "-", "-", f"{copy['seconds']:.2f}",
                     _n(copy["records_per_s"])))
    out += _table(("run", "records", "MB", "to 202 s", "end to end s", "records/s"), runs)
    out.append("")
    for check in figures.get("targets", []):
        out.append(f"  {verdict(check['ok'])}: {check['what']}: {check['figure']} "
                   f"(target {check['target']})")
    stages = figures.get("single", {}).get("stages")
    if stages:
        out += ["", f"stages of the {figures['single']['label']} run (time spent in each; "
                "database writes run one transaction per partition at a time, summed here)"]
        out += _table(("stage", "seconds", "records", "records/s in stage"), [
            (STAGE_LABELS.get(s["stage"], s["stage"]), f"{s['seconds']:.2f}",
             _n(s["records"]) if s["records"] else "-",
             _n(s["records_per_s"]) if s["records_per_s"] else "-")
            for s in stages
        ])
        slowest = max(stages, key=lambda s: s["seconds"])
        out.append(f"  most time: {STAGE_LABELS.get(slowest['stage'], slowest['stage'])}")
    sweep = figures.get("batch_sweep")
    if sweep:
        out += ["", f"batch size sweep ({_n(sweep['records'])} records each, one payload)"]
        out += _table(("batch size", "end to end s", "records/s"), [
            (str(r["batch_size"]) + (" (default)" if r["batch_size"] == sweep["default"] else ""),
             f"{r['total_s']:.2f}", _n(r["records_per_s"]))
            for r in sweep["runs"]
        ])
        out.append(f"  fastest: {sweep['fastest']}")
    return "\n".join(out)
