"""Admission control: upload slots and queued records, for the service and per tenant."""

from __future__ import annotations

import pytest

from app.settings import Settings
from web.admission import Admission, Backlog, Shares, backpressure_problem, slot_problem
from web.problems import Problem

SHARES = Shares(max_streams=3, max_tenant_streams=2, max_queue_records=1000,
                max_tenant_queue_records=300)


def test_a_tenant_over_its_slots_gets_429_and_a_full_service_503() -> None:
    assert slot_problem(0, 0, SHARES) is None
    mine = slot_problem(2, 2, SHARES)
    assert mine is not None and (mine.status, mine.slug) == (429, "tenant-uploads")
    assert mine.headers["Retry-After"] == "1"
    full = slot_problem(3, 1, SHARES)
    assert full is not None and (full.status, full.slug) == (503, "too-many-uploads")
    # a full service is said first: everyone waits, whoever filled it
    both = slot_problem(3, 2, SHARES)
    assert both is not None and both.status == 503


def test_backpressure_for_everyone_then_per_tenant() -> None:
    backlog = Backlog(400, 12.0, {"busy": 400})
    mine = backpressure_problem(backlog, "busy", SHARES)
    assert mine is not None and (mine.status, mine.slug) == (429, "tenant-backpressure")
    assert mine.headers["Retry-After"] == "5"
    assert backpressure_problem(backlog, "calm", SHARES) is None
    everyone = backpressure_problem(Backlog(1001, 1.0, {"a": 250, "b": 250}), "a", SHARES)
    assert everyone is not None and (everyone.status, everyone.slug) == (503, "backpressure")
    both = backpressure_problem(Backlog(1001, 1.0, {"a": 1001}), "a", SHARES)
    assert both is not None and both.status == 503
    assert backpressure_problem(Backlog(10, 99_999.0, {"a": 10}), "a", SHARES) is None  # age alone


def test_default_shares_are_a_quarter_of_the_service() -> None:
    settings = Settings(max_concurrent_uploads=200, max_queue_records=5_000_000)
    assert (settings.tenant_upload_slots, settings.tenant_queue_records) == (50, 1_250_000)
    assert Settings(max_concurrent_uploads=2).tenant_upload_slots == 1
    assert Settings(max_tenant_uploads=7).tenant_upload_slots == 7


def _admission(backlog: Backlog, refresh_s: float = 60.0) -> tuple[Admission, list[int]]:
    reads: list[int] = []

    async def read() -> Backlog:
        reads.append(1)
        return backlog

    return Admission(shares=SHARES, read_backlog=read, refresh_s=refresh_s), reads


async def test_slots_are_held_per_tenant_and_given_back() -> None:
    admission, _ = _admission(Backlog(0, 0.0))
    async with admission.admit("a"), admission.admit("a"):
        with pytest.raises(Problem) as refused:
            async with admission.admit("a"):
                pass
        assert refused.value.status == 429
        async with admission.admit("b"):
            assert (admission.active, admission.active_by_tenant) == (3, {"a": 2, "b": 1})
            with pytest.raises(Problem) as full:
                async with admission.admit("c"):
                    pass
            assert full.value.status == 503
    assert (admission.active, admission.active_by_tenant) == (0, {})


async def test_records_admitted_count_before_the_next_backlog_read() -> None:
    admission, reads = _admission(Backlog(100, 1.0, {"a": 100}))
    async with admission.admit("a") as slot:
        slot.charge(250)  # 350 > 300: the tenant's next submission is refused
    with pytest.raises(Problem) as refused:
        async with admission.admit("a"):
            pass
    assert refused.value.slug == "tenant-backpressure"
    async with admission.admit("b"):
        pass
    assert len(reads) == 1  # read once, then cached
    assert (await admission.backlog()).records == 350
