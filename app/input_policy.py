"""Which operations each producer input topic accepts (``SLUICE_INPUT_OPERATIONS``).

A record on ``sluice.input.<target>`` names its operation in a header the producer wrote,
and carries no principal Sluice can verify: the broker's ACLs decide who may write the
topic, not what its records may do. Left to the header, anyone allowed to feed a topic
with new readings could also overwrite or delete every row of its table. So an input topic
accepts inserts only, unless the operator grants more for its target; a record asking for
anything else fails with ``operation_not_allowed`` instead of being applied.

The setting reads ``target=operation,operation;target=operation``, e.g.
``sensor_readings=insert,upsert;meters=insert,upsert,delete``. The target ``*`` stands
for every target without an entry of its own (an entry of its own replaces ``*``, so one
target can be held below the rest). ``target=`` (nothing) closes a topic: every record fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from schemas.vocabulary import Operation

ANY_TARGET = "*"
DEFAULT_OPERATIONS: frozenset[Operation] = frozenset({Operation.INSERT})
"""What an input topic accepts when neither its target nor ``*`` is configured."""
OPERATION_NOT_ALLOWED = "operation_not_allowed"
"""The failure code of a record whose operation its input topic does not accept."""


def parse_input_operations(spec: object) -> object:
    """Parse the compact ``target=op,op;target=op`` form into {target: operations}.

    Anything that is not a string (a mapping given in code) is passed on for pydantic to
    validate. A malformed entry, an unknown operation or a target named twice is an error,
    so that a typo stops the worker at start-up rather than silently narrowing (or, worse,
    seeming to widen) what a topic accepts.
    """
    if not isinstance(spec, str):
        return spec
    grants: dict[str, frozenset[Operation]] = {}
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        target, sep, operations = (part.strip() for part in entry.partition("="))
        if not sep or not target:
            raise ValueError(f"{entry!r}: expected target=operation[,operation...]")
        if target in grants:
            raise ValueError(f"target {target!r} is listed twice")
        names = [o.strip().lower() for o in operations.split(",") if o.strip()]
        unknown = sorted(set(names) - set(Operation))
        if unknown:
            raise ValueError(f"{target}: unknown operations {unknown} "
                             f"(expected {', '.join(Operation)})")
        grants[target] = frozenset(Operation(n) for n in names)
    return grants


@dataclass(frozen=True)
class InputOperations:
    """The operations each target's input topic accepts; inserts only unless granted."""

    grants: Mapping[str, frozenset[Operation]] = field(default_factory=dict)

    def accepted(self, target: str) -> frozenset[Operation]:
        """The target's own entry, else the ``*`` entry, else inserts only."""
        if target in self.grants:
            return self.grants[target]
        return self.grants.get(ANY_TARGET, DEFAULT_OPERATIONS)

    def allows(self, target: str, operation: str) -> bool:
        """Whether a record of this operation on the target's input topic may be applied."""
        return operation in self.accepted(target)

    def unknown_targets(self, known: Iterable[str]) -> list[str]:
        """Configured targets that no target file defines (most likely a typo)."""
        return sorted(set(self.grants) - set(known) - {ANY_TARGET})

    def describe(self, targets: Iterable[str]) -> dict[str, list[str]]:
        """What each of these targets' input topics accepts, for the start-up log line."""
        return {t: sorted(self.accepted(t)) for t in sorted(targets)}
