"""Topic names derived from one prefix."""

from __future__ import annotations

import dataclasses

import pytest

from app.topics import TopicNames


def test_topic_names() -> None:
    topics = TopicNames("sluice")
    assert topics.records == "sluice.records"
    assert topics.results == "sluice.results"
    assert topics.job_reports == "sluice.job-reports"
    assert topics.input_for("sensor_readings") == "sluice.input.sensor_readings"


def test_prefix_is_used_everywhere() -> None:
    topics = TopicNames("acme-prod")
    names = [topics.records, topics.results, topics.job_reports, topics.input_for("t")]
    assert all(name.startswith("acme-prod.") for name in names)
    assert len(set(names)) == len(names)


def test_inputs_differ_per_target() -> None:
    topics = TopicNames("sluice")
    assert topics.input_for("a") != topics.input_for("b")
    assert topics.input_for("records") != topics.records


def test_topic_names_are_frozen_values() -> None:
    topics = TopicNames("sluice")
    assert topics == TopicNames("sluice")
    with pytest.raises(dataclasses.FrozenInstanceError):
        topics.prefix = "other"  # type: ignore[misc]
