"""deploy/grafana/sluice-dashboard.json queries only series Sluice exports: a renamed or
misspelt metric would otherwise leave a panel silently empty."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import app.metrics  # noqa: F401 - registers every Sluice collector in REGISTRY

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "sluice-dashboard.json"
METRIC_NAME = re.compile(r"\bsluice_[a-z0-9_]+")
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
"""The series each collector type exposes, after its family's name; a gauge exposes the name."""


def load_dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def series_by_panel(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Panel title -> the sluice_ series its PromQL expressions name."""
    return {panel["title"]: {name for target in panel.get("targets", ())
                             for name in METRIC_NAME.findall(target.get("expr", ""))}
            for panel in dashboard["panels"]}


def dashboard_series() -> set[str]:
    """Every sluice_ series the dashboard queries (as exposed: _total, _bucket and so on)."""
    return set().union(*series_by_panel(load_dashboard()).values())


def exported_series() -> set[str]:
    """Every series name the collectors registered by app.metrics can expose, whether or not
    a labelled one has a child yet (such a family collects no samples)."""
    return {family.name + suffix for family in REGISTRY.collect()
            for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_every_panel_queries_a_sluice_metric(dashboard: dict[str, Any]) -> None:
    """Guards the next test against passing because it found no name to check."""
    for title, names in series_by_panel(dashboard).items():
        assert names, f"panel {title!r} queries no sluice_ metric"


def test_every_metric_a_panel_queries_is_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_series()
    for title, names in series_by_panel(dashboard).items():
        assert names <= exported, f"panel {title!r} queries unknown series {sorted(names - exported)}"


def test_panels_read_the_chosen_prometheus_data_source(dashboard: dict[str, Any]) -> None:
    """The data source is a variable, so the file imports into any Grafana unchanged."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        sources = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources), panel["title"]
