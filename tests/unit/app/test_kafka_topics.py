"""Topic specs: partitions, replication factor and min.insync.replicas from settings."""

from __future__ import annotations

import os

import pytest
from aiokafka.admin import NewTopic
from pydantic import ValidationError

from app.kafka import topic_creation_failures, topic_specs
from app.settings import ENV_PREFIX, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from an environment without SLUICE_* variables."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def _shape(spec: NewTopic) -> tuple[str, int, int, dict[str, str]]:
    return spec.name, spec.num_partitions, spec.replication_factor, spec.topic_configs


def test_defaults_suit_the_single_embedded_broker() -> None:
    settings = Settings()
    assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (1, 1)
    specs = topic_specs(["sluice.records"], settings)
    assert [_shape(s) for s in specs] == [("sluice.records", 4, 1, {"min.insync.replicas": "1"})]


def test_production_settings_give_three_replicas_and_two_in_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_TOPIC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("SLUICE_TOPIC_MIN_INSYNC_REPLICAS", "2")
    monkeypatch.setenv("SLUICE_PARTITIONS", "12")
    specs = topic_specs(["sluice.records", "sluice.results"], Settings())
    assert [_shape(s) for s in specs] == [
        ("sluice.records", 12, 3, {"min.insync.replicas": "2"}),
        ("sluice.results", 12, 3, {"min.insync.replicas": "2"}),
    ]


@pytest.mark.parametrize(("replication", "min_insync"), [("1", "2"), ("3", "4"), ("0", "1"), ("3", "0")])
def test_unsatisfiable_replication_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, replication: str, min_insync: str
) -> None:
    """min.insync.replicas above the replica count would refuse every acks=all write."""
    monkeypatch.setenv("SLUICE_TOPIC_REPLICATION_FACTOR", replication)
    monkeypatch.setenv("SLUICE_TOPIC_MIN_INSYNC_REPLICAS", min_insync)
    with pytest.raises(ValidationError):
        Settings()


def test_creation_failures_ignore_success_and_already_exists() -> None:
    # (topic, error_code, error_message) as in CreateTopicsResponse.topic_errors;
    # 36 TOPIC_ALREADY_EXISTS: another process won the race, which is fine.
    errors = [("a", 0, None), ("b", 36, "exists"), ("c", 38, "Replication factor: 3 larger than brokers: 1")]
    assert topic_creation_failures(errors) == {"c": "InvalidReplicationFactorError: Replication factor: "
                                                     "3 larger than brokers: 1"}
    assert topic_creation_failures([("a", 0, None), ("b", 36, None)]) == {}


def test_creation_failures_of_a_version_0_answer_have_no_message() -> None:
    assert topic_creation_failures([("a", 0), ("c", 38)]) == {
        "c": "InvalidReplicationFactorError: Replication-factor is invalid."}
