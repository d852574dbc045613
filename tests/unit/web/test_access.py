"""The access policy: deny by default, delete granted on its own, per-subject limits."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from app.devtools.devauth import DEV_POLICY
from web.access import PolicyError, is_allowed, limits_for, load_policy, may_use_target, parse_policy
from web.auth import Principal

POLICY = tomllib.loads("""
[roles.loader.targets]
sensor_readings = ["insert", "upsert"]

[roles.admin.targets]
"*" = ["insert", "upsert", "delete"]

[subjects."svc-cleanup".targets]
sensor_readings = ["delete"]

[subjects."svc-cleanup".limits]
requests_per_s = 5
records_burst = 1000
""")


def who(subject: str = "someone", *roles: str) -> Principal:
    return Principal(subject, "t", frozenset({"bulk:write"}), frozenset(roles))


def test_deny_by_default_and_delete_is_separate() -> None:
    policy = parse_policy(POLICY)
    assert not is_allowed(policy, who(), "sensor_readings", "insert")
    assert is_allowed(policy, who("x", "loader"), "sensor_readings", "upsert")
    assert not is_allowed(policy, who("x", "loader"), "sensor_readings", "delete")
    assert not is_allowed(policy, who("x", "loader"), "other_table", "insert")
    assert is_allowed(policy, who("x", "admin"), "other_table", "delete")
    assert is_allowed(policy, who("svc-cleanup"), "sensor_readings", "delete")
    assert not is_allowed(policy, who("svc-cleanup"), "sensor_readings", "insert")
    assert may_use_target(policy, who("svc-cleanup"), "sensor_readings")
    assert not may_use_target(policy, who("svc-cleanup"), "other_table")


def test_limits_per_subject() -> None:
    policy = parse_policy(POLICY)
    limits = limits_for(policy, who("svc-cleanup"))
    assert (limits.requests_per_s, limits.records_burst, limits.records_per_s) == (5, 1000, None)
    assert limits_for(policy, who()).requests_per_s is None


@pytest.mark.parametrize("bad", [
    {"roles": {"r": {"targets": {"t": ["drop"]}}}},
    {"roles": {"r": {"targets": {"t": "insert"}}}},
    {"roles": {"r": {"limits": {"requests_per_s": 1}}}},
    {"subjects": {"s": {"limits": {"requests_per_s": -1}}}},
    {"subjects": {"s": {"limits": {"speed": 1}}}},
    {"subjects": {"s": {"grants": {}}}},
    {"admins": {}},
])
def test_invalid_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        parse_policy(bad)


def test_the_dev_policy_allows_the_dev_role_everything(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(DEV_POLICY)
    policy = load_policy(path)
    for operation in ("insert", "upsert", "delete"):
        assert is_allowed(policy, who("dev", "dev"), "anything", operation)
    assert not is_allowed(policy, who("dev"), "anything", "insert")
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "missing.toml")
