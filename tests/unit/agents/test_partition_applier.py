"""The apply loop of one partition, driven with a fake sink: what waits, what is written in
which order, and when the position moves (only after the outcomes are published)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import asyncpg
import pytest

from agents.apply.decode import EnvelopeDecoder, RecordsMessage
from agents.apply.partition import WRITE_GAVE_UP, ApplySettings, PartitionApplier
from app.store.positions import Claim, Fence, Fenced
from app.store.sink import BatchResult, Undeliverable
from schemas.envelope import Envelope, EnvelopeCodec
from schemas.outcomes import Outcome
from schemas.vocabulary import RecordStatus
from schemas.write_plan import Verdict
from tests.unit.conftest import make_envelope, make_message

SETTINGS = ApplySettings(batch_size=1000, write_attempts=3, db_retry_max_s=0.01)


class FakeSink:
    """Records every call; the jobs in ``receiving`` are still being received."""

    def __init__(self) -> None:
        self.receiving: set[str] = set()
        self.calls: list[tuple[str, Any]] = []
        self.failures: list[BaseException] = []
        """Raised, one per call, by the next writes."""

    async def still_receiving(self, job_ids: Iterable[str]) -> set[str]:
        return self.receiving & set(job_ids)

    async def write(self, envelopes: Sequence[Envelope], owner: Claim,
                    undeliverable: Sequence[Undeliverable] = (), *,
                    give_up: Verdict | None = None,
                    lock_timeout_s: float | None = None) -> BatchResult:
        if self.failures:
            raise self.failures.pop(0)
        self.calls.append(("write", ([(e.job_id, [i.index for i in e.items]) for e in envelopes],
                                     list(undeliverable), give_up)))
        status = give_up.status if give_up else RecordStatus.SUCCEEDED
        return BatchResult.of(outcomes=[Outcome(e.job_id, i.index, status, None)
                                     for e in envelopes for i in e.items])

    async def advance(self, fence: Fence) -> None:
        self.calls.append(("advance", fence.next_offset))

    async def open_job(self, job_id: str) -> None:
        raise AssertionError("early writes are off in these tests")

    @property
    def written(self) -> list[tuple[str, list[int]]]:
        return [env for kind, (envs, _, _) in self.writes() for env in envs if kind == "write"]

    def writes(self) -> list[tuple[str, Any]]:
        return [c for c in self.calls if c[0] == "write"]

    @property
    def advances(self) -> list[int]:
        return [c[1] for c in self.calls if c[0] == "advance"]


class Publisher:
    """Publishes at once, or holds every send until ``release``."""

    def __init__(self, hold: bool = False) -> None:
        self.sent: list[list[str]] = []
        self._released = asyncio.Event()
        if not hold:
            self._released.set()

    async def __call__(self, result: BatchResult, chunk: Sequence[Envelope]) -> Awaitable[object]:
        self.sent.append([e.job_id for e in chunk])
        return asyncio.ensure_future(self._released.wait())

    def release(self) -> None:
        self._released.set()


async def _no_new_targets() -> bool:
    return False


def applier(codec: EnvelopeCodec, sink: FakeSink, publish: Publisher | None = None,
            position: int | None = 0) -> PartitionApplier:
    decoder = EnvelopeDecoder(codec, _no_new_targets, unknown_target_wait_s=0)
    return PartitionApplier(Claim(3, 7, position), sink, publish or Publisher(), decoder, SETTINGS)


def messages(codec: EnvelopeCodec, *jobs: str, start: int = 0) -> list[RecordsMessage]:
    return [make_message(codec, start + n, make_envelope(job, range(n * 10, n * 10 + 10)))
            for n, job in enumerate(jobs)]


async def test_a_job_still_receiving_waits_and_the_others_are_applied(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    sink.receiving = {"big"}
    apply = applier(codec, sink)
    await apply.apply(messages(codec, "a", "big", "b", "big", "c"))
    assert [job for job, _ in sink.written] == ["a", "b", "c"]
    # The position stays at the first envelope that waits: a crash reads it again.
    assert sink.advances == [1]
    assert apply.waiting and apply.waiting_bytes > 0


async def test_waiting_envelopes_go_first_once_their_job_is_sealed(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    sink.receiving = {"big"}
    apply = applier(codec, sink)
    await apply.apply(messages(codec, "big", "a"))
    sink.receiving.clear()
    await apply.apply(messages(codec, "b", start=2))
    assert [job for job, _ in sink.written] == ["a", "big", "b"]
    assert sink.advances == [3]
    assert not apply.waiting


async def test_an_empty_take_looks_again_at_the_waiting_jobs(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    sink.receiving = {"big"}
    apply = applier(codec, sink, position=40)
    await apply.apply(messages(codec, "big", "big", start=40))
    assert sink.written == [] and sink.advances == []
    sink.receiving.clear()
    await apply.apply([])
    assert [job for job, _ in sink.written] == ["big", "big"]
    assert sink.advances == [42]


async def test_the_position_moves_only_after_the_outcomes_are_published(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    publish = Publisher(hold=True)
    apply = applier(codec, sink, publish)
    take = asyncio.create_task(apply.apply(messages(codec, "a", "b")))
    await asyncio.sleep(0.05)
    assert len(sink.writes()) == 1 and publish.sent == [["a", "b"]]
    assert sink.advances == [], "moved past outcomes the broker does not have"
    publish.release()
    await take
    assert sink.advances == [2] and apply.position == 2


async def test_chunks_keep_log_order_and_whole_envelopes(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    decoder = EnvelopeDecoder(codec, _no_new_targets, unknown_target_wait_s=0)
    apply = PartitionApplier(Claim(0, 1, 0), sink, Publisher(), decoder,
                             ApplySettings(batch_size=500, write_attempts=3, db_retry_max_s=0.01))
    take = [make_message(codec, n, make_envelope(f"j{n}", range(300))) for n in range(5)]
    await apply.apply(take)
    assert [[job for job, _ in envs] for _, (envs, _, _) in sink.writes()] == [
        ["j0"], ["j1"], ["j2"], ["j3"], ["j4"]]
    assert sink.advances == [5]


async def test_a_stale_owner_stops_before_moving_anything(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    sink.failures = [Fenced("partition 3 was claimed by another worker")]
    apply = applier(codec, sink)
    with pytest.raises(Fenced):
        await apply.apply(messages(codec, "a"))
    assert sink.advances == [] and apply.position == 0


async def test_an_unreachable_database_is_waited_for(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    sink.failures = [ConnectionRefusedError(), OSError("down"), ConnectionResetError()]
    apply = applier(codec, sink)
    await apply.apply(messages(codec, "a"))
    assert [job for job, _ in sink.written] == ["a"] and sink.advances == [1]


async def test_a_batch_refused_past_the_bound_fails_its_records(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    sink.failures = [asyncpg.exceptions.DeadlockDetectedError("deadlock")] * SETTINGS.write_attempts
    apply = applier(codec, sink)
    await apply.apply(messages(codec, "a"))
    ((_, (envs, _, give_up)),) = sink.writes()
    assert envs == [("a", list(range(10)))]
    assert give_up is not None and give_up.code == WRITE_GAVE_UP and "40P01" in give_up.message
    assert sink.advances == [1]


async def test_an_unreadable_message_is_written_as_undeliverable(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    apply = applier(codec, sink)
    broken = RecordsMessage(1, 1_700_000_000.0, b"\x00not an envelope",
                            [("sluice-job", b"lost"), ("sluice-records", b"12")])
    await apply.apply([*messages(codec, "a"), broken])
    ((_, (envs, undeliverable, _)),) = sink.writes()
    assert envs == [("a", list(range(10)))]
    assert undeliverable == [Undeliverable(3, 1, "lost", 12, undeliverable[0].reason)]
    assert sink.advances == [2]


async def test_nothing_moves_back(codec: EnvelopeCodec) -> None:
    sink = FakeSink()
    apply = applier(codec, sink, position=10)
    await apply.apply(messages(codec, "a", start=4))  # read again after a rebalance
    assert sink.advances == [] and apply.position == 10
