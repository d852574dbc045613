"""Per-target RBAC: which subjects and roles may run which operation on which target.

The policy is a TOML file, read once at start-up. Everything not granted is denied.
``delete`` is granted on its own, never implied by ``insert`` or ``upsert``::

    [roles.loader.targets]
    sensor_readings = ["insert", "upsert"]

    [subjects."svc-cleanup".targets]
    sensor_readings = ["delete"]

    [subjects."svc-cleanup".limits]      # optional per-principal rate limits
    requests_per_s = 5
    requests_burst = 10
    records_per_s = 10000
    records_burst = 100000

The target ``"*"`` stands for every target.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.vocabulary import Operation
from web.auth import Principal

OPERATIONS = frozenset(Operation)
ANY_TARGET = "*"
LIMIT_FIELDS = ("requests_per_s", "requests_burst", "records_per_s", "records_burst")


class PolicyError(ValueError):
    """The policy file is not valid; the web process refuses to start."""


Grants = dict[str, frozenset[str]]
"""target (or "*") -> allowed operations"""


@dataclass(frozen=True)
class Limits:
    """Per-principal rate-limit overrides (None: the configured default)."""

    requests_per_s: float | None = None
    requests_burst: int | None = None
    records_per_s: float | None = None
    records_burst: int | None = None


@dataclass(frozen=True)
class AccessPolicy:
    """Grants by role and by subject, plus per-subject rate limits."""

    roles: dict[str, Grants] = field(default_factory=dict)
    subjects: dict[str, Grants] = field(default_factory=dict)
    limits: dict[str, Limits] = field(default_factory=dict)


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


def parse_policy(doc: dict[str, Any]) -> AccessPolicy:
    """Validate a policy document (the parsed TOML)."""
    unknown = set(doc) - {"roles", "subjects"}
    if unknown:
        raise PolicyError(f"unknown policy sections {sorted(unknown)}")
    roles: dict[str, Grants] = {}
    subjects: dict[str, Grants] = {}
    limits: dict[str, Limits] = {}
    for section, into in (("roles", roles), ("subjects", subjects)):
        for name, entry in doc.get(section, {}).items():
            where = f"{section}.{name}"
            if not isinstance(entry, dict) or set(entry) - {"targets", "limits"}:
                raise PolicyError(f"{where} may only hold targets and limits")
            into[name] = _grants(where, entry.get("targets", {}))
            if "limits" in entry:
                if section != "subjects":
                    raise PolicyError(f"{where}: limits are per subject only")
                limits[name] = _limits(where, entry["limits"])
    return AccessPolicy(roles, subjects, limits)


def load_policy(path: Path) -> AccessPolicy:
    """Read and validate the policy file."""
    try:
        with path.open("rb") as f:
            return parse_policy(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"cannot read access policy {path}: {e}") from e


def _allows(grants: Grants | None, target: str, operation: str) -> bool:
    if not grants:
        return False
    return operation in grants.get(target, frozenset()) or operation in grants.get(ANY_TARGET, frozenset())


def is_allowed(policy: AccessPolicy, principal: Principal, target: str, operation: str) -> bool:
    """Deny by default: allowed only if the subject or one of its roles is granted it."""
    if _allows(policy.subjects.get(principal.subject), target, operation):
        return True
    return any(_allows(policy.roles.get(role), target, operation) for role in principal.roles)


def may_use_target(policy: AccessPolicy, principal: Principal, target: str) -> bool:
    """Whether any operation on the target is granted (an early check before the body is read)."""
    return any(is_allowed(policy, principal, target, op) for op in OPERATIONS)


def limits_for(policy: AccessPolicy, principal: Principal) -> Limits:
    """The principal's rate-limit overrides, if any."""
    return policy.limits.get(principal.subject, Limits())
