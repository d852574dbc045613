"""The access policy: deny by default, delete granted on its own, rules and limits per tenant."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from app.devtools.devauth import DEV_POLICY
from web.access import (
    Limits,
    PolicyError,
    is_allowed,
    limits_for,
    load_policy,
    may_use_target,
    parse_policy,
    tenant_limits_for,
)
from web.auth import Principal

POLICY = tomllib.loads("""
[all_tenants.roles.loader.targets]
sensor_readings = ["insert", "upsert"]

[all_tenants.roles.admin.targets]
"*" = ["insert", "upsert", "delete"]

[all_tenants.subjects."svc-cleanup".targets]
sensor_readings = ["delete"]

[all_tenants.subjects."svc-cleanup".limits]
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
    {"all_tenants": {"roles": {"r": {"targets": {"t": ["drop"]}}}}},
    {"all_tenants": {"roles": {"r": {"targets": {"t": "insert"}}}}},
    {"all_tenants": {"roles": {"r": {"limits": {"requests_per_s": 1}}}}},
    {"all_tenants": {"subjects": {"s": {"limits": {"requests_per_s": -1}}}}},
    {"all_tenants": {"subjects": {"s": {"limits": {"speed": 1}}}}},
    {"all_tenants": {"subjects": {"s": {"grants": {}}}}},
    {"all_tenants": {"limits": {"requests_per_s": 1}}},
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


# Tenant-scoped rules -------------------------------------------------------------------------

TENANT_POLICY = tomllib.loads("""
[all_tenants.roles.operator.targets]  # explicitly every tenant
"*" = ["insert"]

[all_tenants.subjects."svc-global".limits]
requests_burst = 7
records_per_s = 3

[tenants.acme.roles.loader.targets]
sensor_readings = ["insert", "upsert"]

[tenants.acme.subjects."svc-cleanup".targets]
sensor_readings = ["delete"]

[tenants.acme.subjects."svc-global".limits]
requests_burst = 2

[tenants.acme.limits]
requests_per_s = 50
records_burst = 1000
""")


def at(tenant: str, subject: str = "someone", *roles: str) -> Principal:
    return Principal(subject, tenant, frozenset({"bulk:write"}), frozenset(roles))


def test_a_tenant_role_grants_nothing_in_another_tenant() -> None:
    policy = parse_policy(TENANT_POLICY)
    assert is_allowed(policy, at("acme", "x", "loader"), "sensor_readings", "upsert")
    assert not is_allowed(policy, at("globex", "x", "loader"), "sensor_readings", "upsert")
    assert not may_use_target(policy, at("globex", "x", "loader"), "sensor_readings")
    assert is_allowed(policy, at("acme", "svc-cleanup"), "sensor_readings", "delete")
    assert not is_allowed(policy, at("globex", "svc-cleanup"), "sensor_readings", "delete")


def test_global_rules_apply_in_every_tenant() -> None:
    policy = parse_policy(TENANT_POLICY)
    for tenant in ("acme", "globex"):
        assert is_allowed(policy, at(tenant, "x", "operator"), "anything", "insert")
        assert not is_allowed(policy, at(tenant, "x", "operator"), "anything", "delete")


def test_limits_per_tenant_and_per_subject_within_a_tenant() -> None:
    policy = parse_policy(TENANT_POLICY)
    # the tenant's own rule wins field by field; the global rule fills in the rest
    acme = limits_for(policy, at("acme", "svc-global"))
    assert (acme.requests_burst, acme.records_per_s) == (2, 3)
    assert limits_for(policy, at("globex", "svc-global")).requests_burst == 7
    assert tenant_limits_for(policy, "acme") == Limits(requests_per_s=50, records_burst=1000)
    assert tenant_limits_for(policy, "globex") == Limits()


@pytest.mark.parametrize("bad", [
    {"tenants": {"acme": {"admins": {}}}},
    {"tenants": {"acme": {"roles": {"r": {"limits": {"requests_per_s": 1}}}}}},
    {"tenants": {"acme": {"limits": {"uploads": 1}}}},
    {"tenants": {"acme": {"subjects": {"s": {"targets": {"t": ["drop"]}}}}}},
    {"tenants": {"acme": "everything"}},
    {"tenants": ["acme"]},
])
def test_invalid_tenant_sections_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        parse_policy(bad)


@pytest.mark.parametrize("section", ["roles", "subjects"])
def test_top_level_rules_of_earlier_versions_are_refused_with_the_way_to_move_them(section: str) -> None:
    # They granted in every tenant without saying so: a role name of one tenant's
    # administrators would have opened every other tenant's targets.
    with pytest.raises(PolicyError, match=r"\[tenants\.<tenant>.*\[all_tenants"):
        parse_policy({section: {"loader": {"targets": {"sensor_readings": ["insert"]}}}})


def test_a_dev_policy_written_by_an_earlier_version_is_rewritten(tmp_path: Path) -> None:
    from app.devtools.devauth import _EARLIER_DEV_POLICIES, ensure_dev_auth

    ensure_dev_auth(tmp_path)
    policy_file = next(tmp_path.rglob("policy.toml"))
    policy_file.write_text(_EARLIER_DEV_POLICIES[0])
    ensure_dev_auth(tmp_path)
    assert policy_file.read_text() == DEV_POLICY
    policy_file.write_text(_EARLIER_DEV_POLICIES[0] + "# edited by hand\n")
    ensure_dev_auth(tmp_path)
    assert policy_file.read_text().endswith("# edited by hand\n")  # never overwritten
