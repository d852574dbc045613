"""DedupIndex: window expiry, size bound, re-application of a hash."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tables.dedup_index import DedupIndex


def h(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_seen_within_the_window_only() -> None:
    index = DedupIndex(window_s=100, max_entries=1_000)
    index.add([h(1), h(2)], at=1_000)
    assert index.seen(h(1), now=1_050)
    assert not index.seen(h(3), now=1_050)
    assert not index.seen(h(1), now=1_100)  # exactly the window later: expired


def test_expire_forgets_old_batches_and_keeps_new_ones() -> None:
    index = DedupIndex(window_s=100, max_entries=1_000)
    index.add([h(1)], at=1_000)
    index.add([h(2)], at=1_060)
    index.expire(now=1_120)
    assert len(index) == 1
    assert index.oldest() == 1_060
    assert index.seen(h(2), now=1_120)


def test_the_size_bound_evicts_oldest_batches_first() -> None:
    index = DedupIndex(window_s=10_000, max_entries=3)
    index.add([h(1), h(2)], at=1)
    index.add([h(3), h(4)], at=2)
    assert len(index) == 2
    assert not index.seen(h(1), now=3)
    assert index.seen(h(4), now=3)
    assert index.oldest() == 2


def test_a_hash_applied_again_survives_the_expiry_of_its_first_batch() -> None:
    index = DedupIndex(window_s=100, max_entries=1_000)
    index.add([h(1)], at=1_000)
    index.add([h(1)], at=1_080)
    index.expire(now=1_101)
    assert index.seen(h(1), now=1_101)


def test_clear_and_empty_batches() -> None:
    index = DedupIndex(window_s=100, max_entries=10)
    index.add([], at=5)
    assert index.oldest() is None
    index.add([h(1)], at=5)
    index.clear()
    assert len(index) == 0 and not index.seen(h(1), now=5)


@given(st.lists(st.lists(st.integers(0, 50), max_size=5), max_size=30), st.integers(1, 20))
def test_never_more_than_max_entries_and_newest_batch_kept(
    batches: list[list[int]], max_entries: int
) -> None:
    index = DedupIndex(window_s=1e9, max_entries=max_entries)
    for at, batch in enumerate(batches):
        index.add([h(n) for n in batch], at=float(at))
        assert len(index) <= max_entries
    last = next((b for b in reversed(batches) if b), None)
    if last is not None and len(set(last)) <= max_entries:
        assert all(index.seen(h(n), now=len(batches)) for n in last)
