"""Target discovery on the running web process: the targets a caller may use, with their
schema, key, formats and the operations the policy grants that caller; nothing of the
others."""

from __future__ import annotations

import json

import aiohttp

from schemas.targets import BUILTIN_TARGETS_DIR
from tests.integration.conftest import Stack, bearer, token_for


async def _get(stack: Stack, path: str, headers: dict[str, str]) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession(stack.base_url) as http, http.get(path, headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.json(content_type=None)


async def test_a_writer_sees_the_target_its_schema_key_formats_and_every_granted_operation(
        stack: Stack) -> None:
    status, _, listing = await _get(stack, "/v1/targets", stack.auth_headers)
    assert status == 200
    (target,) = [t for t in listing["targets"] if t["name"] == "sensor_readings"]
    assert target["key"] == ["sensor_id", "sampled_at"]
    assert [(c["name"], c["type"], c["nullable"]) for c in target["columns"]] == [
        ("sensor_id", "string", False), ("value", "double", False),
        ("sampled_at", "timestamp-millis", False)]
    assert target["schema"] == json.loads((BUILTIN_TARGETS_DIR / "sensor_readings.avsc").read_text())
    assert set(target["formats"]) == {"application/json", "application/x-ndjson", "text/csv",
                                      "application/x-protobuf", "application/avro"}
    assert target["operations"] == ["insert", "upsert", "delete"]
    status, _, one = await _get(stack, "/v1/targets/sensor_readings", stack.auth_headers)
    assert (status, one) == (200, target)


async def test_the_operations_listed_are_the_callers_own(stack: Stack) -> None:
    token = token_for(stack.auth, subject="discover-insert-only", roles=("insert-only",))
    status, _, one = await _get(stack, "/v1/targets/sensor_readings", bearer(token))
    assert (status, one["operations"]) == (200, ["insert"])


async def test_a_target_the_caller_may_not_use_is_answered_as_one_that_does_not_exist(
        stack: Stack) -> None:
    nobody = bearer(token_for(stack.auth, subject="discover-no-role", roles=("no-such-role",)))
    status, _, listing = await _get(stack, "/v1/targets", nobody)
    assert (status, listing) == (200, {"targets": []})
    hidden = await _get(stack, "/v1/targets/sensor_readings", nobody)
    missing = await _get(stack, "/v1/targets/no_such_target", stack.auth_headers)
    for status, content_type, problem in (hidden, missing):
        assert (status, content_type) == (404, "application/problem+json")
        assert problem["type"].endswith("/target-not-found")
    assert hidden[2]["detail"] == missing[2]["detail"]  # nothing tells one from the other


async def test_discovery_needs_a_token_with_a_bulk_scope(stack: Stack) -> None:
    status, content_type, _ = await _get(stack, "/v1/targets", {})
    assert (status, content_type) == (401, "application/problem+json")
    scopeless = bearer(token_for(stack.auth, subject="discover-scopeless", scopes=("other",)))
    status, _, problem = await _get(stack, "/v1/targets", scopeless)
    assert status == 403 and problem["type"].endswith("/insufficient-scope")
