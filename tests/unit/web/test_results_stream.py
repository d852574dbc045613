"""Results listings: blocks read in order of their first index, outcomes yielded in index
order, and the NDJSON rendering."""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

import orjson
import pytest

from app.store import ledger
from schemas.outcomes import LETTER, Outcome, OutcomeBlock
from schemas.vocabulary import RecordStatus
from web.results_stream import render_page

DAY1, DAY2 = date(2024, 5, 1), date(2024, 5, 2)


class _Ledger:
    """A pool whose one query is the block page query, answered from blocks in memory."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.held = 0

    @asynccontextmanager
    async def acquire(self) -> Any:
        self.held += 1
        try:
            yield self
        finally:
            self.held -= 1

    async def fetch(self, query: str, job_id: str, limit: int, *after: Any) -> list[dict[str, Any]]:
        column = next((c for c in ("failed", "duplicates", "aborted") if f"{c} > 0" in query), None)
        found = sorted(
            (r for r in self.rows if r["job_id"] == job_id
             and (column is None or r[column] > 0)
             and (not after or (r["first_idx"], r["written_on"]) > tuple(after))),
            key=lambda r: (r["first_idx"], r["written_on"]))
        return found[:limit]


def _row(block: OutcomeBlock, day: date) -> dict[str, Any]:
    return {"job_id": block.job_id, "first_idx": block.first, "written_on": day,
            "idx": block.indexes, "statuses": block.statuses, "keys": block.keys,
            "codes": block.codes, "messages": block.messages,
            "records": block.records, "records_truncated": block.records_truncated,
            "failed": block.count(RecordStatus.FAILED),
            "duplicates": block.count(RecordStatus.DUPLICATE),
            "aborted": block.count(RecordStatus.ABORTED)}


def _blocks(records: int, partitions: int, per_block: int, seed: int) -> list[dict[str, Any]]:
    """Records spread over partitions as the web spreads them (scattered indexes per
    envelope), a block per envelope, written on one of two days."""
    rnd = random.Random(seed)
    by_partition: list[list[int]] = [[] for _ in range(partitions)]
    for index in range(records):
        by_partition[rnd.randrange(partitions)].append(index)
    rows = []
    letters = list(LETTER.values())
    for indexes in by_partition:
        for start in range(0, len(indexes), per_block):
            part = indexes[start:start + per_block]
            block = OutcomeBlock("j", part, "".join(rnd.choice(letters) for _ in part),
                                 [None] * len(part))
            rows.append(_row(block, rnd.choice((DAY1, DAY2))))
    rnd.shuffle(rows)
    return rows


async def _listed(pool: _Ledger, status: RecordStatus | None, per_page: int) -> list[Outcome]:
    out: list[Outcome] = []
    async for page in ledger.iter_outcomes(pool, "j", status,  # type: ignore[arg-type]
                                           blocks_per_page=per_page):
        assert pool.held == 0, "a page is handed over with its connection still held"
        assert page, "an empty page"
        out += page
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("per_page", [1, 2, 7, 1000])
async def test_every_outcome_once_in_index_order_whatever_the_blocks(seed: int, per_page: int) -> None:
    rows = _blocks(500, partitions=4, per_block=16, seed=seed)
    pool = _Ledger(rows)
    everything = sorted((i, s) for r in rows for i, s in zip(r["idx"], r["statuses"], strict=True))
    listed = await _listed(pool, None, per_page)
    assert [(o.index, LETTER[RecordStatus(o.status)]) for o in listed] == everything
    for status in RecordStatus:
        wanted = [i for i, s in everything if s == LETTER[status]]
        assert [o.index for o in await _listed(pool, status, per_page)] == wanted
    assert await _listed(_Ledger([]), None, per_page) == []


def test_render_page_is_the_documented_ndjson() -> None:
    page = [
        Outcome("j", 0, RecordStatus.SUCCEEDED, '{"id":1}'),
        Outcome("j", 1, RecordStatus.FAILED, None, "wrong_type", "m"),
    ]
    assert render_page(page) == (
        b'{"index":0,"status":"succeeded","key":{"id":1}}\n'
        b'{"index":1,"status":"failed","key":null,"code":"wrong_type","message":"m"}\n')
    assert [orjson.loads(x)["index"] for x in render_page(page).splitlines()] == [0, 1]


def test_a_failed_line_carries_the_record_as_received_and_says_when_it_was_cut() -> None:
    page = [
        Outcome("j", 0, RecordStatus.SUCCEEDED, '{"id":1}'),
        Outcome("j", 1, RecordStatus.FAILED, None, "wrong_type", "m", '{"id":"x"}'),
        Outcome("j", 2, RecordStatus.FAILED, None, "record_too_large", "m", "y" * 4096, True),
        Outcome("j", 3, RecordStatus.FAILED, None, "wrong_type", "m"),  # written before records
    ]
    lines = [orjson.loads(x) for x in render_page(page).splitlines()]
    assert "record" not in lines[0]
    assert lines[1] == {"index": 1, "status": "failed", "key": None, "code": "wrong_type",
                        "message": "m", "record": '{"id":"x"}'}
    assert lines[2]["record"] == "y" * 4096 and lines[2]["record_truncated"] is True
    assert "record" not in lines[3] and "record_truncated" not in lines[3]


async def test_a_listing_gives_back_the_records_its_blocks_hold() -> None:
    from schemas.outcomes import blocks_of

    (block,) = blocks_of([Outcome("j", 0, RecordStatus.SUCCEEDED, None),
                          Outcome("j", 1, RecordStatus.FAILED, None, "c", "m", "r1", True)])
    pool = _Ledger([_row(block, DAY1)])
    listed = await _listed(pool, RecordStatus.FAILED, 8)
    assert [(o.index, o.record, o.record_truncated) for o in listed] == [(1, "r1", True)]
