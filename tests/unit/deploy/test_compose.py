"""deploy/compose.yaml: no default passwords; topics replicated three times, two in sync."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from app.kafka import topic_specs
from app.settings import ENV_PREFIX, Settings
from tests.unit.deploy.compose_subset import Node, parse

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
# Compose's required-variable interpolation: `up` stops with the message when it is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")
URL_PASSWORD = re.compile(r"://[^/@\s:]*:(?P<password>\$\{[^}]*\}|[^@\s]*)@")
SLUICE_SERVICES = ("worker", "web")


@pytest.fixture(scope="module")
def services() -> dict[str, Node]:
    document = parse((DEPLOY / "compose.yaml").read_text())
    services = document["services"]
    assert isinstance(services, dict)
    return services


def environment(services: dict[str, Node], name: str) -> dict[str, str]:
    service = services[name]
    assert isinstance(service, dict), name
    env = service.get("environment", {})
    assert isinstance(env, dict) and all(isinstance(v, str) for v in env.values()), name
    return {key: str(value) for key, value in env.items()}


def brokers(services: dict[str, Node]) -> list[str]:
    return [name for name in services
            if "broker" in environment(services, name).get("KAFKA_PROCESS_ROLES", "")]


def test_no_literal_password_anywhere(services: dict[str, Node]) -> None:
    """A default like `change-me` ends up in production; an unset variable must stop `up` instead."""
    for name in services:
        for key, value in environment(services, name).items():
            if SECRET_KEY.search(key) and not key.endswith("_FILE"):
                assert REQUIRED_VARIABLE.fullmatch(value), f"{name}: {key}={value!r}"
            for match in URL_PASSWORD.finditer(value):
                assert REQUIRED_VARIABLE.fullmatch(match["password"]), f"{name}: {key}={value!r}"


@pytest.mark.parametrize("variable", ["SLUICE_DATABASE_URL", "SLUICE_REDIS_URL"])
def test_sluice_authenticates_to_its_stores(services: dict[str, Node], variable: str) -> None:
    for name in SLUICE_SERVICES:
        match = URL_PASSWORD.search(environment(services, name)[variable])
        assert match and REQUIRED_VARIABLE.fullmatch(match["password"]), f"{name}: {variable}"


def test_redis_requires_the_password_sluice_sends(services: dict[str, Node]) -> None:
    redis = services["redis"]
    assert isinstance(redis, dict)
    command = str(redis.get("command", ""))
    sent = re.search(r"\$\{(\w+):\?", environment(services, "web")["SLUICE_REDIS_URL"])
    assert sent, "SLUICE_REDIS_URL carries no password variable"
    # The redis container gets the same variable and its command sets requirepass from it.
    [key] = [key for key, value in environment(services, "redis").items()
             if REQUIRED_VARIABLE.fullmatch(value) and value.startswith("${" + sent[1] + ":?")]
    assert "requirepass" in command and re.search(rf"\$\$({key})\b", command), command


def test_production_topics_get_three_replicas_two_in_sync(
    services: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process that creates topics (web, worker, Faust) reads the same settings."""
    for name in SLUICE_SERVICES:
        for variable in [v for v in os.environ if v.upper().startswith(ENV_PREFIX)]:
            monkeypatch.delenv(variable)
        for key, value in environment(services, name).items():
            if key.startswith(("SLUICE_TOPIC_", "SLUICE_PARTITIONS")):
                monkeypatch.setenv(key, value)
        [spec] = topic_specs(["sluice.records"], Settings())
        assert (spec.replication_factor, spec.topic_configs) == (3, {"min.insync.replicas": "2"}), name


def test_the_kafka_cluster_can_hold_three_replicas(services: dict[str, Node]) -> None:
    names = brokers(services)
    assert len(names) >= 3, names
    for name in names:
        env = environment(services, name)
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name
    for name in SLUICE_SERVICES:
        bootstrap = environment(services, name)["SLUICE_KAFKA_BOOTSTRAP"]
        assert {hostport.split(":")[0] for hostport in bootstrap.split(",")} == set(names), name


def test_the_subset_reader_merges_anchors_and_refuses_the_rest() -> None:
    text = "a:\n  env: &e\n    X: '1'  # c\n  b:\n    <<: *e\n    Y: \"${Y:?set Y}\"\n  l:\n    - one\n"
    assert parse(text) == {"a": {"env": {"X": "1"}, "b": {"X": "1", "Y": "${Y:?set Y}"}, "l": ["one"]}}
    for bad in ["a: 1\n   b: 2\n", "a:\n  <<: *missing\n", "- top\n", "a: |\n  text\n"]:
        with pytest.raises(ValueError):
            parse(bad)
