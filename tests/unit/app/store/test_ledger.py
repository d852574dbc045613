"""The outcomes ledger's day partitions: their names, the day a name stands for, and expiry."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.store.ledger import PARTITION_PREFIX, TABLE, day_of, expired, partition_name

TODAY = date(2024, 5, 10)


def test_partition_name_is_the_table_and_the_day() -> None:
    assert partition_name(date(2024, 5, 1)) == "sluice_outcome_blocks_p20240501"
    assert partition_name(date(2024, 12, 31)) == f"{PARTITION_PREFIX}20241231"


@given(st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31)))
def test_day_of_reads_back_the_day_of_partition_name(day: date) -> None:
    assert day_of(partition_name(day)) == day


def test_partition_names_sort_by_day() -> None:
    days = [date(2024, 1, 9), date(2023, 12, 31), date(2024, 1, 10)]
    assert sorted(map(partition_name, days)) == list(map(partition_name, sorted(days)))


@pytest.mark.parametrize(
    "name",
    [
        f"{TABLE}_default",  # the default partition
        TABLE,  # the parent table
        PARTITION_PREFIX,  # the prefix with no day
        "other_table_p20240501",  # another table's partitions
        "20240501",  # a day without the prefix
        f"x{PARTITION_PREFIX}20240501",
        f"{PARTITION_PREFIX}2024050",  # too short
        f"{PARTITION_PREFIX}202405011",  # too long
        f"{PARTITION_PREFIX}2024-05-01",
        f"{PARTITION_PREFIX}2024050a",
        f"{PARTITION_PREFIX}+2024050",
        f"{PARTITION_PREFIX} 2024050",
        f"{PARTITION_PREFIX}20240501_old",
    ],
)
def test_day_of_is_none_for_any_other_table(name: str) -> None:
    assert day_of(name) is None


@pytest.mark.parametrize("suffix", [
    "20241399",  # eight ASCII digits, no date
    "2024050\u00b2",  # a superscript two: isdigit() says yes, int() says no
    "\u0662\u0660\u0662\u0664\u0660\u0665\u0660\u0661",  # Arabic-Indic digits
])
def test_day_of_is_none_for_eight_characters_that_are_no_ascii_date(suffix: str) -> None:
    assert day_of(f"{PARTITION_PREFIX}{suffix}") is None


def _days_ago(n: int) -> str:
    return partition_name(TODAY - timedelta(days=n))


def test_expired_keeps_a_day_exactly_retention_days_old_and_drops_the_day_before() -> None:
    partitions = [_days_ago(n) for n in (9, 8, 7, 6, 0)]
    assert expired(partitions, TODAY, retention_days=7) == [_days_ago(9), _days_ago(8)]


def test_expired_keeps_today_and_the_days_ahead() -> None:
    partitions = [_days_ago(n) for n in (0, -1, -2)]
    assert expired(partitions, TODAY, retention_days=0) == []
    assert expired(partitions, TODAY, retention_days=1) == []


def test_expired_with_no_retention_drops_every_day_before_today() -> None:
    partitions = [_days_ago(n) for n in (0, 1, 400)]
    assert expired(partitions, TODAY, retention_days=0) == [_days_ago(400), _days_ago(1)]


def test_expired_ignores_other_tables() -> None:
    partitions = [f"{TABLE}_default", TABLE, "other_table_p20000101", f"{PARTITION_PREFIX}2000010",
                  _days_ago(30)]
    assert expired(partitions, TODAY, retention_days=7) == [_days_ago(30)]


def test_expired_is_sorted_oldest_first_whatever_the_input_order() -> None:
    partitions = [_days_ago(n) for n in (20, 40, 10, 30, 1)]
    assert expired(iter(partitions), TODAY, retention_days=5) == [
        _days_ago(40), _days_ago(30), _days_ago(20), _days_ago(10)]


@given(
    ages=st.sets(st.integers(min_value=-3, max_value=60)),
    retention=st.integers(min_value=0, max_value=40),
)
def test_expired_is_exactly_the_days_older_than_the_retention(ages: set[int], retention: int) -> None:
    dropped = expired([_days_ago(n) for n in ages], TODAY, retention)
    assert dropped == sorted(_days_ago(n) for n in ages if n > retention)
