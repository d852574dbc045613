"""Turning one raw record into an envelope item bound for a partition: pure and per-record hot."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from schemas.envelope import Item
from schemas.identity import partition_for
from schemas.targets import Target
from schemas.typed_json import TypedJsonDecoder
from schemas.validation import RecordConverter, RecordInvalid
from schemas.vocabulary import Operation

OPERATIONS = tuple(Operation)
"""Every operation, in the order the docs list them."""


def key_only(target: Target) -> Target:
    """The target seen by a delete: only its key columns are needed, or allowed."""
    return replace(target, columns=tuple(c for c in target.columns if c.name in target.key))


class RecordPreparer:
    """Converts raw records of one target and operation into items and their partition.

    A delete carries only the key; its row is widened to the full column layout with
    None elsewhere so every later stage sees one row shape per target.
    """

    def __init__(self, target: Target, operation: str, partitions: int) -> None:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        self.target = target
        self.operation = operation
        self._partitions = partitions
        self._key_of = target.key_of
        if operation == "delete":
            narrow = key_only(target)
            self._converter = RecordConverter(narrow)
            positions = [target.column_names.index(n) for n in narrow.column_names]
            width = len(target.columns)
            self._widen: Any = lambda row: _widen(row, positions, width)
        else:
            narrow = target
            self._converter = RecordConverter(target)
            self._widen = None
        self._typed = TypedJsonDecoder(narrow, self._converter)

    def decode_json(self, data: bytes) -> tuple[Any, ...] | None:
        """One JSON record (bytes) decoded and converted in compiled code, or None when it
        is not valid as it stands (prepare it the exact way to learn why)."""
        return self._typed.decode(data)

    def prepare(self, index: int, raw: Any, textual: bool = False) -> tuple[int, Item]:
        """Return (partition, item); a record that fails validation becomes a failed item.

        Failed items go to partition ``index % partitions``: they carry no key, and
        spreading them keeps no partition waiting on another.
        """
        try:
            row = (
                self._converter.from_text(raw) if textual else self._converter.from_json(raw)
            )
        except RecordInvalid as e:
            return index % self._partitions, Item(index, None, e.code, e.message)
        return self.place(index, row)

    def place(self, index: int, row: tuple[Any, ...]) -> tuple[int, Item]:
        """Return (partition, item) for a converted row (decode_json's, or prepare's)."""
        if self._widen is not None:
            row = self._widen(row)
        return partition_for(self.target.name, self._key_of(row), self._partitions), Item(index, row)


def _widen(row: tuple[Any, ...], positions: list[int], width: int) -> tuple[Any, ...]:
    full: list[Any] = [None] * width
    for value, position in zip(row, positions, strict=True):
        full[position] = value
    return tuple(full)
