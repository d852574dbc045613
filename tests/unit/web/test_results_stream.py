"""Results listings: the page query, the paging over index ranges and the NDJSON rendering."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

import orjson

from app.store import jobs
from web.results_stream import render_page

DAY1, DAY2 = date(2024, 5, 1), date(2024, 5, 2)


def test_page_query_numbers_its_parameters_in_order() -> None:
    q = jobs.results_page_query(bounded=True, filtered=True, after=True)
    assert "idx >= $3 AND idx < $4 AND status = $5 AND (idx, written_on) > ($6, $7)" in q
    q = jobs.results_page_query(bounded=False, filtered=False, after=True)
    assert "job_id = $1 AND idx >= $3 AND (idx, written_on) > ($4, $5)" in q
    assert q.endswith("ORDER BY idx, written_on LIMIT $2")


class _Ledger:
    """A pool whose one query is the page query, answered from rows in memory."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries = 0
        self.held = 0

    @asynccontextmanager
    async def acquire(self) -> Any:
        self.held += 1
        try:
            yield self
        finally:
            self.held -= 1

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        self.queries += 1
        job_id, limit, lo, *rest = args
        hi = rest.pop(0) if "idx < $" in query else None
        status = rest.pop(0) if "status = $" in query else None
        after = tuple(rest) if re.search(r"\(idx, written_on\) >", query) else None
        found = sorted(
            (r for r in self.rows if r["job_id"] == job_id and r["idx"] >= lo
             and (hi is None or r["idx"] < hi) and (status is None or r["status"] == status)
             and (after is None or (r["idx"], r["written_on"]) > after)),
            key=lambda r: (r["idx"], r["written_on"]))
        return found[:limit]


def _row(idx: int, status: str = "succeeded", day: date = DAY1) -> dict[str, Any]:
    return {"job_id": "j", "idx": idx, "status": status, "key": None, "code": None,
            "message": None, "written_on": day}


async def _listed(ledger: _Ledger, status: str | None, records: int, page_rows: int) -> list[Any]:
    out = []
    async for page in jobs.iter_results(ledger, "j", status, records=records,  # type: ignore[arg-type]
                                        page_rows=page_rows):
        assert ledger.held == 0, "a page is handed over with its connection still held"
        out += [(r["idx"], r["written_on"]) for r in page]
    return out


async def test_every_outcome_once_in_order_across_pages_and_days() -> None:
    # idx 4 and 5 on two days: 5 rows in the range [3, 6), more than a page holds, so the
    # page goes on after its last row. Row 12 lies beyond the record count: listed too.
    rows = [_row(i, "failed" if i % 3 == 0 else "succeeded") for i in range(10)]
    rows += [_row(4, day=DAY2), _row(5, day=DAY2), _row(12)]  # and one beyond the count
    ledger = _Ledger(rows)
    expected = sorted((r["idx"], r["written_on"]) for r in rows)
    assert await _listed(ledger, None, records=10, page_rows=3) == expected
    failed = sorted((r["idx"], r["written_on"]) for r in rows if r["status"] == "failed")
    assert await _listed(ledger, "failed", records=10, page_rows=3) == failed
    assert await _listed(_Ledger([]), None, records=0, page_rows=3) == []


def test_render_page_is_the_documented_ndjson() -> None:
    page = [
        {"idx": 0, "status": "succeeded", "key": '{"id":1}', "code": None, "message": None},
        {"idx": 1, "status": "failed", "key": None, "code": "wrong_type", "message": "m"},
    ]
    assert render_page(page) == (
        b'{"index":0,"status":"succeeded","key":{"id":1}}\n'
        b'{"index":1,"status":"failed","key":null,"code":"wrong_type","message":"m"}\n')
    assert [orjson.loads(x)["index"] for x in render_page(page).splitlines()] == [0, 1]
