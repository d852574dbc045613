"""What is left of a `Prefer: wait` for a request, counted from its arrival."""

from web.job_endings import ANSWER_MARGIN_S, time_left_s


def test_the_time_left_counts_from_the_request_and_keeps_a_margin_to_answer() -> None:
    assert time_left_s(10, arrived=100.0, now=100.0) == 10 - ANSWER_MARGIN_S
    assert time_left_s(10, arrived=100.0, now=104.0) == 6 - ANSWER_MARGIN_S
    assert time_left_s(2, arrived=100.0, now=102.5) == 0.0
    assert time_left_s(0, arrived=100.0, now=100.0) == 0.0
