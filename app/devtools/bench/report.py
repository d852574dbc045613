"""The benchmark's figures as a table for people (JSON for machines is the same dict)."""

from __future__ import annotations

from collections import Counter
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


def _run_row(run: dict[str, Any]) -> tuple[str, ...]:
    return (run["label"], _n(run["records"]), f"{run['payload_mb']:.1f}", f"{run['to_202_s']:.2f}",
            f"{run['total_s']:.2f}", _n(run["records_per_s"]))


def _runs(figures: dict[str, Any]) -> list[str]:
    """One row per run that moves records, Sluice's and its baselines'."""
    rows = [_run_row(run) for key in ("single", "watched", "dirty", "concurrent", "big")
            if (run := figures.get(key))]
    notes = []
    if watched := figures.get("watched"):
        notes.append(f"  with {watched['watchers']} event streams open: "
                     f"{watched['single_ratio']:.2f}x the single run's records/s; "
                     f"{watched['watchers_saw_end']} of them saw the job's end, after "
                     f"{watched['events_per_watcher']:.1f} events each on average")
    if csv := figures.get("csv"):
        rows.append(_run_row(csv["sluice"]))
        if peer := csv["pgloader"]:
            rows.append((peer["label"], _n(peer["records"]), f"{csv['file_mb']:.1f}", "-",
                         f"{peer['seconds']:.2f}", _n(peer["records_per_s"])))
        else:
            notes.append(f"  pgloader: {csv['pgloader_missing']}")
    if producers := figures.get("producers"):
        rows.append((producers["label"], _n(producers["records"]), "-",
                     f"{producers['produce_s']:.2f} (sent)", f"{producers['total_s']:.2f}",
                     _n(producers["records_per_s"])))
    if copy := figures.get("copy"):
        rows.append((copy["label"], _n(copy["records"]), "-", "-", f"{copy['seconds']:.2f}",
                     _n(copy["records_per_s"])))
    return [*_table(("run", "records", "MB", "to 202 s", "end to end s", "records/s"), rows), *notes]


def _formats(formats: dict[str, Any]) -> list[str]:
    """The same records in each body format: size, speed and the web's cost per record."""
    rows = [(run["format"], f"{run['bytes_per_record']:.1f}", f"{run['to_202_s']:.2f}",
             f"{run['total_s']:.2f}", _n(run["records_per_s"]), f"{run['parse_us_per_record']:.1f}",
             f"{run['web_cpu_us_per_record']:.1f}")
            for run in formats["runs"]]
    notes = []
    if ratios := formats.get("grpc_over_http_protobuf"):
        notes.append(f"  gRPC Submit / HTTP Protobuf, same run: {ratios['to_answer']:.2f}x records/s "
                     f"to the answer (gRPC's Job, HTTP's 202), {ratios['end_to_end']:.2f}x end to end")
    return ["", f"body formats: {_n(formats['records'])} records in each, one payload at a time "
            "(parse: the web's parse stage, wall time; web CPU: parse and produce)",
            *_table(("format", "bytes/record", "to 202 s", "end to end s", "records/s",
                     "parse us/record", "web CPU us/record"), rows), *notes]


def _small_jobs(small: dict[str, Any], inline: dict[str, Any] | None) -> list[str]:
    def row(run: dict[str, Any], how: str) -> tuple[str, ...]:
        ms = {k: f"{run[k] * 1000:.0f}" for k in ("p50_s", "p90_s", "p99_s", "max_s")}
        return (how, _n(run["jobs"]), _n(run["records"]), f"{run['total_s']:.2f}",
                _n(run["records_per_s"]), ms["p50_s"], ms["p90_s"], ms["p99_s"], ms["max_s"])

    rows = [row(small, f"polls every {small['poll_s'] * 1000:.0f} ms")]
    notes = []
    if inline:
        rows.append(row(inline, "Prefer: wait"))
        notes.append(f"  Prefer: wait answered {_n(inline['answered_inline'])} of "
                     f"{_n(inline['jobs'])} jobs 200 at their end (the others 202, then polled)")
    return ["", f"small jobs: {small['label']}, each client waiting for its job's end before "
            "sending the next; latency is POST to knowing the end",
            *_table(("client", "jobs", "records", "seconds", "records/s", "p50 ms", "p90 ms",
                     "p99 ms", "max ms"), rows), *notes]


def _long(long: dict[str, Any]) -> list[str]:
    rows = [(str(k), _n(p["records"]), f"{p['seconds']:.2f}", _n(p["records_per_s"]),
             f"{p['peak_web_rss_mb']:.0f}", f"{p['peak_worker_rss_mb']:.0f}")
            for k, p in enumerate(long["payloads"], start=1)]
    return ["", f"long run: {long['label']}, one after the other (RSS sampled every 20 ms)",
            *_table(("payload", "records", "seconds", "records/s", "web peak MB", "worker peak MB"), rows),
            f"  overall: {_n(long['records_per_s'])} records/s; peak web {long['peak_web_rss_mb']:.0f} MB, "
            f"peak worker {long['peak_worker_rss_mb']:.0f} MB"]


def _retries(figures: dict[str, Any]) -> list[str]:
    """Requests the bench retried after a 429/503 (each at most a few times), per run."""
    docs = {key: figures.get(key) for key in ("single", "dirty", "concurrent", "big", "small_jobs", "long")}
    if csv := figures.get("csv"):
        docs["csv"] = csv["sluice"]
    found = []
    for key, doc in docs.items():
        if doc and (retries := doc.get("retries")):
            by_status = ", ".join(f"{status}: {n}" for status, n in retries.items())
            found.append(f"{key} {sum(retries.values())} ({by_status})")
    return [f"  requests retried after 429/503: {'; '.join(found)}"] if found else []


def _on_kafka(kafka: dict[str, Any]) -> list[str]:
    """The runs on Apache Kafka, and the producer path beside Kafka Connect's."""
    if "skipped" in kafka:
        return ["", f"on Apache Kafka: not measured ({kafka['skipped']})"]
    rows = [_run_row(run) for key in ("single", "concurrent") if (run := kafka.get(key))]
    rows.extend((run["label"], _n(run["records"]), "-", f"{run['produce_s']:.2f} (sent)",
                 f"{run['total_s']:.2f}", _n(run["records_per_s"]))
                for key in ("producers", "connect") if (run := kafka.get(key)))
    out = ["", f"on Apache Kafka ({kafka['nodes']} nodes; replication factor "
           f"{3 if kafka['nodes'] >= 3 else 1}, acks=all)",
           *_table(("run", "records", "MB", "to 202 s", "end to end s", "records/s"), rows)]
    if (ratio := kafka.get("producers_over_connect")) is not None:
        connect = kafka["connect"]
        out.append(f"  Sluice's producer path / Kafka Connect + Debezium JDBC sink: {ratio:.2f}x "
                   f"(Connect: {connect['tasks']} tasks, batch.size {connect['batch_size']}, upsert)")
    return out


def render(figures: dict[str, Any]) -> str:
    """Every figure of one bench run, as aligned plain-text tables."""
    out = [f"Sluice benchmark, {figures['machine']}", "", *_runs(figures), *_retries(figures)]
    if formats := figures.get("formats"):
        out += _formats(formats)
    if small := figures.get("small_jobs"):
        out += _small_jobs(small, figures.get("small_jobs_inline"))
    if long := figures.get("long"):
        out += _long(long)
    if kafka := figures.get("kafka"):
        out += _on_kafka(kafka)
    checks = figures.get("targets", [])
    out += ["", "goals"]
    for check in checks:
        out.append(f"  {check['verdict']}: {check['what']}: {check['figure']} (target {check['target']})")
    tally = Counter(check["verdict"] for check in checks)
    out.append("  " + ", ".join(f"{n} {v}" for v, n in tally.items()))
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
