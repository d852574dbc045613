"""The apply loop's early write: a big job's envelopes written while it is received.

Driven with a fake sink and a fake early write; what the database does with an open
transaction (invisible rows, rollback on failure, a frozen worker) is tested on the real
stack in tests/integration/test_early_writes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence

import asyncpg
import pytest

from agents.apply.decode import EnvelopeDecoder, RecordsMessage
from agents.apply.partition import EARLY_LOCK_WAIT_S, ApplySettings, PartitionApplier
from app.store.positions import Claim, Fence, Fenced
from app.store.sink import BatchResult, Undeliverable, WrittenChunk
from schemas.envelope import Envelope, EnvelopeCodec
from schemas.outcomes import Outcome
from schemas.vocabulary import RecordStatus
from schemas.write_plan import Verdict
from tests.unit.conftest import make_envelope, make_message

BATCH = 500
SETTINGS = ApplySettings(batch_size=BATCH, write_attempts=3, db_retry_max_s=0.01, early_writes=True)


class FakeEarly:
    """Keeps what it was given; ``finish`` commits unless the job is in ``failed``."""

    def __init__(self, sink: FakeSink, job_id: str) -> None:
        self.job_id = job_id
        self.sink = sink
        self.written: list[list[int]] = []
        self.keys: set[int] = set()
        self.state = "open"

    async def write(self, envelopes: Sequence[Envelope]) -> None:
        assert self.state == "open"
        self.written.append([i.index for e in envelopes for i in e.items])
        self.keys.update(i.index for e in envelopes for i in e.items)

    def overlaps(self, envelopes: Sequence[Envelope]) -> bool:
        return any(i.index in self.keys for e in envelopes for i in e.items)

    async def finish(self, owner: Claim) -> list[WrittenChunk] | None:
        assert self.state == "open"
        if self.sink.finish_error is not None:
            self.state = "discarded"
            raise self.sink.finish_error
        if self.job_id in self.sink.failed:
            self.state = "discarded"
            return None
        self.state = "committed"
        return [WrittenChunk(BatchResult.of(outcomes=[
            Outcome(self.job_id, n, RecordStatus.SUCCEEDED, None) for n in chunk]),
            [Envelope(self.job_id, "sensor_readings", "insert", ())]) for chunk in self.written]

    async def discard(self) -> None:
        if self.state == "open":
            self.state = "discarded"


class FakeSink:
    def __init__(self) -> None:
        self.receiving: set[str] = set()
        self.failed: set[str] = set()
        self.early: list[FakeEarly] = []
        self.written: list[tuple[str, list[int]]] = []
        self.lock_timeouts: list[float | None] = []
        self.failures: list[BaseException] = []
        self.finish_error: BaseException | None = None
        self.advances: list[int] = []

    async def still_receiving(self, job_ids: Iterable[str]) -> set[str]:
        return self.receiving & set(job_ids)

    async def open_job(self, job_id: str) -> FakeEarly | None:
        if job_id not in self.receiving:
            return None
        self.early.append(FakeEarly(self, job_id))
        return self.early[-1]

    async def write(self, envelopes: Sequence[Envelope], owner: Claim,
                    undeliverable: Sequence[Undeliverable] = (), *,
                    give_up: Verdict | None = None,
                    lock_timeout_s: float | None = None) -> BatchResult:
        self.lock_timeouts.append(lock_timeout_s)
        if self.failures:
            raise self.failures.pop(0)
        self.written += [(e.job_id, [i.index for i in e.items]) for e in envelopes]
        return BatchResult.of(outcomes=[Outcome(e.job_id, i.index, RecordStatus.SUCCEEDED, None)
                                        for e in envelopes for i in e.items])

    async def advance(self, fence: Fence) -> None:
        self.advances.append(fence.next_offset)


class Published:
    def __init__(self) -> None:
        self.indexes: list[int] = []

    async def __call__(self, result: BatchResult, chunk: Sequence[Envelope]) -> Awaitable[object]:
        self.indexes += [o.index for o in result.outcomes()]
        return asyncio.sleep(0)


async def _no_new_targets() -> bool:
    return False


def applier(codec: EnvelopeCodec, sink: FakeSink, published: Published) -> PartitionApplier:
    decoder = EnvelopeDecoder(codec, _no_new_targets, unknown_target_wait_s=0)
    return PartitionApplier(Claim(3, 7, 0), sink, published, decoder, SETTINGS)


def envelopes(codec: EnvelopeCodec, job: str, count: int, *, start: int = 0, size: int = 250,
              first_index: int = 0) -> list[RecordsMessage]:
    """``count`` messages of ``size`` records of one job, from offset ``start``."""
    return [make_message(codec, start + n, make_envelope(
        job, range(first_index + n * size, first_index + (n + 1) * size))) for n in range(count)]


async def _big_job_written_early(codec: EnvelopeCodec, messages: int
                                 ) -> tuple[FakeSink, Published, PartitionApplier]:
    """An applier that has taken ``messages`` envelopes of 250 records of the receiving job "big"."""
    sink, published = FakeSink(), Published()
    sink.receiving = {"big"}
    apply = applier(codec, sink, published)
    await apply.apply(envelopes(codec, "big", messages))
    return sink, published, apply


async def test_a_big_job_is_written_while_received_and_committed_at_its_seal(
        codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 4)
    (early,) = sink.early
    assert early.written == [list(range(500)), list(range(500, 1000))]
    assert sink.advances == [] and published.indexes == [], "nothing is final before the seal"
    await apply.apply(envelopes(codec, "big", 2, start=4, first_index=1000))
    assert early.written[2:] == [list(range(1000, 1500))]
    sink.receiving.clear()  # sealed
    await apply.apply([])
    assert early.state == "committed"
    assert sorted(published.indexes) == list(range(1500))
    assert sink.written == [], "written again by the ordinary path"
    assert sink.advances == [6] and not apply.waiting


async def test_envelopes_that_arrive_after_the_seal_take_the_ordinary_path(
        codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 2)
    sink.receiving.clear()
    await apply.apply(envelopes(codec, "big", 1, start=2, first_index=500))
    assert sink.early[0].state == "committed"
    assert sink.written == [("big", list(range(500, 750)))]
    assert sorted(published.indexes) == list(range(750)) and sink.advances == [3]


async def test_a_job_that_fails_its_submission_is_rolled_back_and_takes_the_ordinary_path(
        codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 4)
    sink.receiving.clear()
    sink.failed = {"big"}
    await apply.apply([])
    assert sink.early[0].state == "discarded"
    # The sink's ordinary write reports a failed job's records as aborted.
    assert [indexes for _, indexes in sink.written] == [
        list(range(n * 250, (n + 1) * 250)) for n in range(4)]
    assert sink.advances == [4]


async def test_a_commit_that_fails_leaves_the_envelopes_to_the_ordinary_path(
        codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 2)
    sink.receiving.clear()
    sink.finish_error = ConnectionResetError()  # the commit's fate unknown: the ledger will say
    await apply.apply([])
    assert [job for job, _ in sink.written] == ["big", "big"] and sink.advances == [2]


async def test_a_stale_owner_commits_nothing(codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 2)
    sink.receiving.clear()
    sink.finish_error = Fenced("claimed by another worker")
    with pytest.raises(Fenced):
        await apply.apply([])
    assert sink.written == [] and sink.advances == [] and published.indexes == []


async def test_small_jobs_just_wait(codec: EnvelopeCodec) -> None:
    sink, published = FakeSink(), Published()
    sink.receiving = {"a", "b"}
    apply = applier(codec, sink, published)
    await apply.apply([*envelopes(codec, "a", 1, size=BATCH - 1),
                       *envelopes(codec, "b", 1, start=1, size=BATCH - 1)])
    assert sink.early == []


async def test_another_jobs_write_of_one_of_its_keys_makes_it_give_way(codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 2)
    # A small job, sealed, writes key 7 (written by the big job, not committed): judged
    # before the big job's rows, as without the early write.
    await apply.apply([make_message(codec, 2, make_envelope("small", [7]))])
    assert sink.early[0].state == "discarded"
    assert sink.written == [("small", [7])]
    assert sink.lock_timeouts == [None], "no early write was open when it wrote"
    # The big job now waits for its seal, and is then written by the ordinary path.
    await apply.apply(envelopes(codec, "big", 2, start=3, first_index=500))
    assert len(sink.early) == 1
    sink.receiving.clear()
    await apply.apply([])
    assert [job for job, _ in sink.written] == ["small", "big", "big", "big", "big"]
    assert sorted(published.indexes) == sorted([7, *range(1000)]) and sink.advances == [5]


async def test_other_keys_are_written_beside_it_with_a_bounded_lock_wait(codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 2)
    await apply.apply([make_message(codec, 2, make_envelope("small", [10_000]))])
    assert sink.early[0].state == "open" and sink.lock_timeouts == [EARLY_LOCK_WAIT_S]
    # Only the envelopes of the big job hold the position back.
    assert sink.advances == [] and published.indexes == [10_000]


async def test_a_lock_it_holds_makes_it_give_way_and_the_write_is_retried(codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 2)
    sink.failures = [asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout")]
    await apply.apply([make_message(codec, 2, make_envelope("small", [10_000]))])
    assert sink.early[0].state == "discarded"
    assert sink.lock_timeouts[:2] == [EARLY_LOCK_WAIT_S, None]
    assert sink.written == [("small", [10_000])]


async def test_closing_discards_it(codec: EnvelopeCodec) -> None:
    sink, published, apply = await _big_job_written_early(codec, 2)
    await apply.close()
    assert sink.early[0].state == "discarded"
