"""Per-record outcomes, kept by the block: the records of one envelope, column by column.

A block is what one envelope's write produced: its records' indexes, one status letter
each, their keys, and codes, messages and the record as received (``schemas.received``)
only where a record has one. The sink builds blocks, the ledger stores one row per
block, the results topic and the results listing expand them. Counting a block's
statuses, or finding a status in it, is a string operation in C rather than a loop over
per-record objects. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from schemas.received import RecordText
from schemas.vocabulary import RecordStatus

T = TypeVar("T")

LETTER: dict[RecordStatus, str] = {
    RecordStatus.SUCCEEDED: "s",
    RecordStatus.FAILED: "f",
    RecordStatus.DUPLICATE: "d",
    RecordStatus.ABORTED: "a",
}
"""How a status is written in a block (and in the ledger's ``statuses`` column)."""
STATUS_OF: dict[str, RecordStatus] = {letter: status for status, letter in LETTER.items()}

MAX_BLOCK_SPAN = 65_536
"""Index values one block may span (last index - first index). A lookup of the blocks that
may hold an index range then reads the blocks starting at most this far before it."""


class Outcome(NamedTuple):
    """What happened to one record."""

    job_id: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing here uses
    status: str
    key: str | None
    code: str | None = None
    message: str | None = None
    record: str | None = None
    """The record as received (schemas.received), on failed outcomes only."""
    record_truncated: bool = False


@dataclass(slots=True)
class OutcomeBlock:
    """The outcomes of some records of one job, in ascending index order."""

    job_id: str
    indexes: list[int]
    statuses: str
    """One letter per record (LETTER)."""
    keys: list[str | None]
    """The key of each record as JSON, None where it has none (a record that failed validation)."""
    codes: list[str | None] | None = None
    """A code per record, or None when no record of the block has one."""
    messages: list[str | None] | None = None
    records: list[str | None] | None = None
    """The record as received of each failed record, or None when no record of the block has
    one (nothing failed, or its outcomes were written before records were kept)."""
    records_truncated: list[bool] | None = None
    """Which records were cut, or None when none was."""

    def __len__(self) -> int:
        return len(self.indexes)

    @property
    def first(self) -> int:
        return self.indexes[0]

    @property
    def last(self) -> int:
        return self.indexes[-1]

    def count(self, status: RecordStatus) -> int:
        """How many records of the block have ``status``."""
        return self.statuses.count(LETTER[status])

    def outcomes(self) -> Iterator[Outcome]:
        """The block record by record."""
        job_id, codes, messages = self.job_id, self.codes, self.messages
        records, cut = self.records, self.records_truncated
        for n, (index, letter, key) in enumerate(zip(self.indexes, self.statuses, self.keys,
                                                     strict=True)):
            yield Outcome(job_id, index, STATUS_OF[letter], key,
                          codes[n] if codes is not None else None,
                          messages[n] if messages is not None else None,
                          records[n] if records is not None else None,
                          cut is not None and cut[n])

    def split(self, max_span: int = MAX_BLOCK_SPAN) -> list[OutcomeBlock]:
        """The block cut where it would span more than ``max_span`` index values."""
        if self.last - self.first <= max_span:
            return [self]
        parts: list[OutcomeBlock] = []
        start = 0
        indexes = self.indexes
        for n in range(1, len(indexes) + 1):
            if n == len(indexes) or indexes[n] - indexes[start] > max_span:
                parts.append(self._slice(start, n))
                start = n
        return parts

    def _slice(self, start: int, stop: int) -> OutcomeBlock:
        records, cut = self.records, self.records_truncated
        return OutcomeBlock(
            self.job_id, self.indexes[start:stop], self.statuses[start:stop], self.keys[start:stop],
            self.codes[start:stop] if self.codes is not None else None,
            self.messages[start:stop] if self.messages is not None else None,
            _some(records[start:stop]) if records is not None else None,
            _some(cut[start:stop]) if cut is not None else None)


def _some(values: list[T]) -> list[T] | None:
    """``values``, or None when none of them is set: a block stores no column of nothing."""
    return values if any(values) else None


class BlockBuilder:
    """Collects one job's outcomes record by record, then makes blocks of them."""

    __slots__ = ("job_id", "indexes", "letters", "keys", "codes", "messages", "_coded", "_records")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.indexes: list[int] = []
        self.letters: list[str] = []
        self.keys: list[str | None] = []
        self.codes: list[str | None] = []
        self.messages: list[str | None] = []
        self._coded = False
        self._records: dict[int, RecordText] = {}
        """By position: few records have one, so the many that succeed cost nothing here."""

    def add(self, index: int, status: RecordStatus, key: str | None,
            code: str | None = None, message: str | None = None,
            record: RecordText | None = None) -> int:
        """Add a record; returns its position, for ``settle`` when its status comes later."""
        self.indexes.append(index)
        self.letters.append(LETTER[status])
        self.keys.append(key)
        self.codes.append(code)
        self.messages.append(message)
        if code is not None or message is not None:
            self._coded = True
        if record is not None:
            self._records[len(self.indexes) - 1] = record
        return len(self.indexes) - 1

    def settle(self, position: int, status: RecordStatus, code: str | None,
               message: str | None, record: RecordText | None = None) -> None:
        """Set the outcome of a record added earlier."""
        self.letters[position] = LETTER[status]
        if code is not None or message is not None:
            self.codes[position] = code
            self.messages[position] = message
            self._coded = True
        if record is not None:
            self._records[position] = record

    def blocks(self) -> list[OutcomeBlock]:
        """The records added, in index order, as blocks of bounded span (none if empty)."""
        if not self.indexes:
            return []
        indexes, letters, keys = self.indexes, self.letters, self.keys
        codes: list[str | None] | None = self.codes if self._coded else None
        messages: list[str | None] | None = self.messages if self._coded else None
        records: list[str | None] | None = None
        cut: list[bool] | None = None
        if self._records:
            found = self._records
            records = [found[n].text if n in found else None for n in range(len(indexes))]
            if any(text.truncated for text in found.values()):
                cut = [n in found and found[n].truncated for n in range(len(indexes))]
        if any(a > b for a, b in zip(indexes, indexes[1:], strict=False)):  # envelopes come sorted; be sure
            order = sorted(range(len(indexes)), key=indexes.__getitem__)
            indexes = [indexes[i] for i in order]
            letters = [letters[i] for i in order]
            keys = [keys[i] for i in order]
            codes = [codes[i] for i in order] if codes is not None else None
            messages = [messages[i] for i in order] if messages is not None else None
            records = [records[i] for i in order] if records is not None else None
            cut = [cut[i] for i in order] if cut is not None else None
        return OutcomeBlock(self.job_id, indexes, "".join(letters), keys, codes, messages,
                            records, cut).split()


def blocks_of(outcomes: Iterable[Outcome]) -> list[OutcomeBlock]:
    """Per-record outcomes as blocks, one job at a time (tests, and outcomes read back)."""
    builders: dict[str, BlockBuilder] = {}
    for o in outcomes:
        builder = builders.get(o.job_id) or builders.setdefault(o.job_id, BlockBuilder(o.job_id))
        builder.add(o.index, RecordStatus(o.status), o.key, o.code, o.message,
                    RecordText(o.record, o.record_truncated) if o.record is not None else None)
    return [block for builder in builders.values() for block in builder.blocks()]


def count_statuses(blocks: Sequence[OutcomeBlock]) -> dict[str, dict[RecordStatus, int]]:
    """Per job, how many records of the blocks have each status."""
    counts: dict[str, dict[RecordStatus, int]] = {}
    for block in blocks:
        job = counts.setdefault(block.job_id, dict.fromkeys(LETTER, 0))
        for status, letter in LETTER.items():
            job[status] += block.statuses.count(letter)
    return counts
