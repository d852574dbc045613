"""What target discovery tells a caller: pure, from the policy and the target."""

from __future__ import annotations

import tomllib

import orjson

from schemas.targets import BUILTIN_TARGETS_DIR, load_target
from web.access import parse_policy
from web.auth import Principal
from web.target_discovery import allowed_operations, target_document

POLICY = parse_policy(tomllib.loads("""
[all_tenants.roles.loader.targets]
sensor_readings = ["upsert", "insert"]

[tenants.acme.roles.cleaner.targets]
"*" = ["delete"]
"""))
SENSOR = load_target(BUILTIN_TARGETS_DIR / "sensor_readings.avsc")


def who(tenant: str, *roles: str) -> Principal:
    return Principal("someone", tenant, frozenset({"bulk:read"}), frozenset(roles))


def test_the_operations_are_this_callers_grants_in_a_fixed_order() -> None:
    assert allowed_operations(POLICY, who("t", "loader"), "sensor_readings") == ["insert", "upsert"]
    assert allowed_operations(POLICY, who("acme", "loader", "cleaner"), "sensor_readings") == [
        "insert", "upsert", "delete"]
    assert allowed_operations(POLICY, who("other", "cleaner"), "sensor_readings") == []
    assert allowed_operations(POLICY, who("t", "loader"), "another_table") == []


def test_the_document_holds_the_key_the_columns_the_schema_and_the_formats() -> None:
    document = target_document(SENSOR, ["insert"])
    assert document["key"] == ["sensor_id", "sampled_at"]
    assert [c["name"] for c in document["columns"]] == ["sensor_id", "value", "sampled_at"]
    assert document["schema"] == orjson.loads((BUILTIN_TARGETS_DIR / "sensor_readings.avsc").read_bytes())
    assert document["doc"].startswith("One measurement from one sensor")
    assert "text/csv" in document["formats"] and document["operations"] == ["insert"]
    assert {"application/x-protobuf", "application/avro"} <= set(document["formats"])
    assert document["links"] == {"self": "/v1/targets/sensor_readings",
                                 "proto": "/v1/targets/sensor_readings.proto"}
