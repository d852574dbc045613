"""SLUICE_INPUT_OPERATIONS: what each producer input topic accepts, inserts only unless granted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.input_policy import InputOperations, parse_input_operations
from app.settings import Settings, env_var
from schemas.vocabulary import Operation

INS, UPS, DEL = Operation.INSERT, Operation.UPSERT, Operation.DELETE


def test_unset_means_inserts_only_for_every_target() -> None:
    policy = InputOperations()
    assert policy.accepted("sensor_readings") == {INS}
    assert policy.allows("anything", "insert")
    assert not policy.allows("anything", "upsert") and not policy.allows("anything", "delete")


def test_the_compact_form_parses_with_spaces_and_any_case() -> None:
    assert parse_input_operations(" sensor_readings = insert, UPSERT ; meters=delete;") == {
        "sensor_readings": {INS, UPS}, "meters": {DEL}}
    assert parse_input_operations("") == {}


def test_a_target_of_its_own_replaces_the_wildcard() -> None:
    grants = parse_input_operations("*=insert,upsert,delete;audit_log=insert")
    assert isinstance(grants, dict)
    policy = InputOperations(grants)
    assert policy.accepted("sensor_readings") == {INS, UPS, DEL}
    assert policy.accepted("audit_log") == {INS}


def test_nothing_after_the_equals_sign_closes_the_topic() -> None:
    grants = parse_input_operations("sensor_readings=")
    assert isinstance(grants, dict)
    assert InputOperations(grants).accepted("sensor_readings") == frozenset()


@pytest.mark.parametrize(("spec", "says"), [
    ("sensor_readings=insert,merge", "unknown operations ['merge']"),
    ("sensor_readings=insert;sensor_readings=delete", "listed twice"),
    ("sensor_readings", "expected target=operation"),
    ("=insert", "expected target=operation"),
])
def test_a_typo_is_an_error_not_a_silent_change(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_input_operations(spec)


def test_targets_no_file_defines_are_named() -> None:
    policy = InputOperations({"sensor_readings": frozenset({INS}), "sensor_reading": frozenset({UPS}),
                              "*": frozenset({INS})})
    assert policy.unknown_targets(["sensor_readings"]) == ["sensor_reading"]
    assert policy.describe(["sensor_readings", "x"]) == {"sensor_readings": ["insert"],
                                                         "x": ["insert"]}


def test_the_setting_reads_the_environment_and_refuses_a_bad_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(env_var("input_operations"), raising=False)
    assert Settings().input_operations == {}
    monkeypatch.setenv(env_var("input_operations"), "sensor_readings=insert,upsert")
    assert Settings().input_operations == {"sensor_readings": {INS, UPS}}
    monkeypatch.setenv(env_var("input_operations"), "sensor_readings=drop")
    with pytest.raises(ValidationError, match="unknown operations"):
        Settings()
