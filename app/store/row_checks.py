"""The target table's own row rules (CHECK and NOT NULL), evaluated set-based on staged rows.

A refused row inside a set-based write aborts the whole statement; finding it costs
statements in proportion to the batch, not to the bad rows. So before writing, the
table's check constraints and NOT NULL columns are evaluated in one query on the staging
table, and the rows they refuse fail with the SQLSTATE PostgreSQL would have raised.
Rules that cannot be evaluated there (a constraint on a column the schema does not
know) are left to the write, which isolates what they refuse.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from schemas.sql import ORD, quote
from schemas.targets import Target
from schemas.vocabulary import RecordStatus
from schemas.write_plan import Verdict

CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
REFRESH_S = 10.0
"""How long rules read from the catalogue are trusted: a constraint added while Sluice
runs is pre-checked within this long (until then, the write isolates what it refuses)."""

_RULES = """
SELECT c.conname AS name, pg_get_expr(c.conbin, c.conrelid) AS expression,
       (SELECT array_agg(a.attname::text) FROM pg_attribute a
         WHERE a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)) AS columns
FROM pg_constraint c WHERE c.conrelid = to_regclass($1) AND c.contype = 'c'
UNION ALL
SELECT NULL, NULL, ARRAY[a.attname::text] FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
"""


@dataclass(frozen=True, slots=True)
class _Rule:
    code: str
    message: str
    refuses: str
    """SQL true for a staged row the rule refuses."""


class RowChecks:
    """The rules of one target's table, re-read from the catalogue every REFRESH_S."""

    def __init__(self, target: Target, stage: str, rows_source: str) -> None:
        self._target = target
        self._stage = quote(stage)
        self._rows_source = rows_source
        self._rules: list[_Rule] = []
        self._read_at = float("-inf")
        self._query: str | None = None
        self._array_query: str | None = None

    def stale(self) -> None:
        """Re-read the rules before the next check (a write met a rule not pre-checked)."""
        self._read_at = float("-inf")

    async def refused(self, conn: asyncpg.Connection, ords: list[int]) -> dict[int, Verdict]:
        """The staged rows among ``ords`` that the table's rules refuse, with their verdicts."""
        await self._fresh(conn)
        if self._query is None or not ords:
            return {}
        return self._verdicts(await conn.fetch(self._query, ords))

    async def refused_in_arrays(self, conn: asyncpg.Connection, columns: Sequence[Sequence[Any]],
                                tenants: Sequence[str | None]) -> dict[int, Verdict]:
        """The same for records given column by column (no staging), by position from 0."""
        await self._fresh(conn)
        if self._array_query is None:
            return {}
        return self._verdicts(await conn.fetch(self._array_query, *columns, tenants))

    async def _fresh(self, conn: asyncpg.Connection) -> None:
        """Re-read the rules when they are older than REFRESH_S."""
        if time.monotonic() - self._read_at > REFRESH_S:
            await self._read(conn)

    def _verdicts(self, rows: Sequence[asyncpg.Record]) -> dict[int, Verdict]:
        failures: dict[int, Verdict] = {}
        for row in rows:
            rule = self._rules[row["rule"]]
            failures[row["ord"]] = Verdict(RecordStatus.FAILED, rule.code, rule.message)
        return failures

    async def _read(self, conn: asyncpg.Connection) -> None:
        target = self._target
        known = {c.name for c in target.columns}
        # Validation already refuses null where the schema forbids it: only columns the
        # schema allows null in but the table does not need a check.
        nullable = {c.name for c in target.columns if c.nullable}
        table = quote(target.name)
        rules: list[_Rule] = []
        for row in await conn.fetch(_RULES, table):
            columns = row["columns"] or []
            if not columns or not set(columns) <= known:
                continue
            if row["name"] is None:
                (column,) = columns
                if column not in nullable:
                    continue
                rules.append(_Rule(
                    NOT_NULL_VIOLATION,
                    f'null value in column "{column}" of relation "{target.name}" violates '
                    "not-null constraint",
                    f"{quote(column)} IS NULL",
                ))
            else:
                rules.append(_Rule(
                    CHECK_VIOLATION,
                    f'new row for relation "{target.name}" violates check constraint "{row["name"]}"',
                    f"({row['expression']}) IS FALSE",
                ))
        self._rules = rules
        self._read_at = time.monotonic()
        if not rules:
            self._query = self._array_query = None
            return
        which = " ".join(f"WHEN {r.refuses} THEN {n}" for n, r in enumerate(rules))
        any_refuses = " OR ".join(r.refuses for r in rules)
        self._query = (
            f"SELECT {quote(ORD)} AS ord, CASE {which} END AS rule FROM {self._stage} "
            f"WHERE {quote(ORD)} = ANY($1::int[]) AND ({any_refuses})"
        )
        self._array_query = (
            f"SELECT s.{quote(ORD)} - 1 AS ord, CASE {which} END AS rule FROM {self._rows_source} "
            f"WHERE ({any_refuses})"
        )
