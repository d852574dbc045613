"""Per-target RBAC: which subjects and roles of which tenant may run which operation on which target.

The policy is a TOML file, read once at start-up. Everything not granted is denied.
``delete`` is granted on its own, never implied by ``insert`` or ``upsert``.

Rules live under the tenant they apply to. A role name or a ``sub`` means something only
within its tenant (tenants' administrators may hand out the same names), so a rule of one
tenant never grants anything in another::

    [tenants.acme.roles.loader.targets]
    sensor_readings = ["insert", "upsert"]

    [tenants.acme.subjects."svc-cleanup".targets]
    sensor_readings = ["delete"]

    [tenants.acme.subjects."svc-cleanup".limits]   # optional: this principal's rate limits
    requests_per_s = 5
    records_burst = 100000

    [tenants.acme.limits]                          # optional: the whole tenant's rate limits
    requests_per_s = 500
    records_burst = 2000000

Rules for every tenant must say so: they live under ``[all_tenants.roles.<role>]`` and
``[all_tenants.subjects.<sub>]`` (the web process logs their names at start-up). Use them
only for names that no tenant can assign, e.g. roles your identity provider reserves for
operators. The top-level ``[roles]`` and ``[subjects]`` tables of earlier versions granted
across tenants without saying so; a policy that still has them is refused at start-up with
the way to move them. The target ``"*"`` stands for every target.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from schemas.vocabulary import Operation
from web.auth import Principal

log = logging.getLogger(__name__)

OPERATIONS = frozenset(Operation)
ANY_TARGET = "*"
LIMIT_FIELDS = ("requests_per_s", "requests_burst", "records_per_s", "records_burst")


class Section(StrEnum):
    """The tables a policy (or one tenant's part of it) may hold."""

    ROLES = "roles"
    SUBJECTS = "subjects"
    TENANTS = "tenants"
    ALL_TENANTS = "all_tenants"
    LIMITS = "limits"
    TARGETS = "targets"


class PolicyError(ValueError):
    """The policy file is not valid; the web process refuses to start."""


Grants = dict[str, frozenset[str]]
"""target (or "*") -> allowed operations"""


@dataclass(frozen=True)
class Limits:
    """Rate-limit overrides (None: the configured default)."""

    requests_per_s: float | None = None
    requests_burst: int | None = None
    records_per_s: float | None = None
    records_burst: int | None = None

    def over(self, fallback: Limits) -> Limits:
        """These limits, with ``fallback``'s value wherever this one sets none."""
        return replace(self, **{f.name: getattr(fallback, f.name) for f in fields(self)
                                if getattr(self, f.name) is None})


@dataclass(frozen=True)
class Rules:
    """Grants by role and by subject, and per-subject rate limits, within one scope."""

    roles: dict[str, Grants] = field(default_factory=dict)
    subjects: dict[str, Grants] = field(default_factory=dict)
    limits: dict[str, Limits] = field(default_factory=dict)


@dataclass(frozen=True)
class TenantRules(Rules):
    """One tenant's rules, plus the rate limits of the tenant as a whole."""

    tenant_limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class AccessPolicy:
    """Global rules (every tenant) and rules per tenant."""

    everywhere: Rules = field(default_factory=Rules)
    tenants: dict[str, TenantRules] = field(default_factory=dict)


def _grants(where: str, raw: Any) -> Grants:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}.targets must be a table of target = [operations]")
    grants: Grants = {}
    for target, operations in raw.items():
        if not isinstance(operations, list) or not all(isinstance(o, str) for o in operations):
            raise PolicyError(f"{where}.targets.{target} must be a list of operations")
        unknown = set(operations) - OPERATIONS
        if unknown:
            raise PolicyError(f"{where}.targets.{target}: unknown operations {sorted(unknown)}")
        grants[str(target)] = frozenset(operations)
    return grants


def _limits(where: str, raw: Any) -> Limits:
    if not isinstance(raw, dict) or set(raw) - set(LIMIT_FIELDS):
        raise PolicyError(f"{where}.limits may only hold {', '.join(LIMIT_FIELDS)}")
    for name, value in raw.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise PolicyError(f"{where}.limits.{name} must be a positive number")
    return Limits(
        requests_per_s=raw.get("requests_per_s"), records_per_s=raw.get("records_per_s"),
        requests_burst=int(raw["requests_burst"]) if "requests_burst" in raw else None,
        records_burst=int(raw["records_burst"]) if "records_burst" in raw else None,
    )


def _table(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    return raw


def _rules(prefix: str, doc: dict[str, Any]) -> Rules:
    """The roles and subjects tables of one scope (global or a tenant)."""
    rules = Rules()
    for section, into in ((Section.ROLES, rules.roles), (Section.SUBJECTS, rules.subjects)):
        for name, entry in _table(prefix + section, doc.get(section, {})).items():
            where = f"{prefix}{section}.{name}"
            if not isinstance(entry, dict) or set(entry) - {Section.TARGETS, Section.LIMITS}:
                raise PolicyError(f"{where} may only hold targets and limits")
            into[name] = _grants(where, entry.get(Section.TARGETS, {}))
            if Section.LIMITS in entry:
                if section != Section.SUBJECTS:
                    raise PolicyError(f"{where}: limits are per subject only")
                rules.limits[name] = _limits(where, entry[Section.LIMITS])
    return rules


def parse_policy(doc: dict[str, Any]) -> AccessPolicy:
    """Validate a policy document (the parsed TOML)."""
    legacy = sorted(set(doc) & {Section.ROLES, Section.SUBJECTS})
    if legacy:
        raise PolicyError(
            f"top-level {', '.join(f'[{s}]' for s in legacy)} tables are no longer read: they granted"
            " in every tenant without saying so. Move each rule under [tenants.<tenant>.roles|subjects]"
            " or, for names no tenant can assign, under [all_tenants.roles|subjects]")
    unknown = set(doc) - {Section.TENANTS, Section.ALL_TENANTS}
    if unknown:
        raise PolicyError(f"unknown policy sections {sorted(unknown)}")
    everywhere = _table(Section.ALL_TENANTS, doc.get(Section.ALL_TENANTS, {}))
    if set(everywhere) - {Section.ROLES, Section.SUBJECTS}:
        raise PolicyError(f"{Section.ALL_TENANTS} may only hold roles and subjects,"
                          f" not {sorted(set(everywhere) - {Section.ROLES, Section.SUBJECTS})}")
    tenants: dict[str, TenantRules] = {}
    for tenant, entry in _table(Section.TENANTS, doc.get(Section.TENANTS, {})).items():
        prefix = f"tenants.{tenant}."
        entry = _table(prefix.rstrip("."), entry)
        unknown = set(entry) - {Section.ROLES, Section.SUBJECTS, Section.LIMITS}
        if unknown:
            raise PolicyError(f"{prefix.rstrip('.')} may only hold roles, subjects and limits,"
                              f" not {sorted(unknown)}")
        rules = _rules(prefix, entry)
        own = _limits(prefix.rstrip("."), entry[Section.LIMITS]) if Section.LIMITS in entry else Limits()
        tenants[str(tenant)] = TenantRules(rules.roles, rules.subjects, rules.limits, own)
    return AccessPolicy(_rules(f"{Section.ALL_TENANTS}.", everywhere), tenants)


def load_policy(path: Path) -> AccessPolicy:
    """Read and validate the policy file."""
    try:
        with path.open("rb") as f:
            policy = parse_policy(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"cannot read access policy {path}: {e}") from e
    if policy.everywhere.roles or policy.everywhere.subjects:
        # Said once at start-up, so that a rule meant for one tenant is noticed.
        log.info("access policy has [all_tenants] rules: they apply in every tenant",
                 extra={"global_roles": sorted(policy.everywhere.roles),
                        "global_subjects": sorted(policy.everywhere.subjects),
                        "tenants": len(policy.tenants)})
    return policy


def _allows(grants: Grants | None, target: str, operation: str) -> bool:
    if not grants:
        return False
    return operation in grants.get(target, frozenset()) or operation in grants.get(ANY_TARGET, frozenset())


def _rules_allow(rules: Rules | None, principal: Principal, target: str, operation: str) -> bool:
    if rules is None:
        return False
    if _allows(rules.subjects.get(principal.subject), target, operation):
        return True
    return any(_allows(rules.roles.get(role), target, operation) for role in principal.roles)


def is_allowed(policy: AccessPolicy, principal: Principal, target: str, operation: str) -> bool:
    """Deny by default: allowed only if a rule of the principal's tenant, or a global rule,
    grants it to the subject or to one of its roles."""
    return (_rules_allow(policy.tenants.get(principal.tenant), principal, target, operation)
            or _rules_allow(policy.everywhere, principal, target, operation))


def may_use_target(policy: AccessPolicy, principal: Principal, target: str) -> bool:
    """Whether any operation on the target is granted (an early check before the body is read)."""
    return any(is_allowed(policy, principal, target, op) for op in OPERATIONS)


def limits_for(policy: AccessPolicy, principal: Principal) -> Limits:
    """The principal's rate-limit overrides: its tenant's rule first, then a global one."""
    tenant = policy.tenants.get(principal.tenant)
    own = tenant.limits.get(principal.subject, Limits()) if tenant else Limits()
    return own.over(policy.everywhere.limits.get(principal.subject, Limits()))


def tenant_limits_for(policy: AccessPolicy, tenant: str) -> Limits:
    """The rate-limit overrides of a whole tenant, if any."""
    rules = policy.tenants.get(tenant)
    return rules.tenant_limits if rules else Limits()
