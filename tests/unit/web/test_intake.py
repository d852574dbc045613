"""The transport-neutral parts of a submission that need no service: keys and answers."""

from __future__ import annotations

import pytest

from web.intake import SUBMISSIONS_PATH, accepted_body, checked_key, job_links
from web.problems import Problem


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_an_idempotency_key_is_1_to_255_characters(key: str) -> None:
    with pytest.raises(Problem) as refused:
        checked_key(key)
    assert (refused.value.status, refused.value.slug) == (400, "bad-idempotency-key")


def test_a_good_key_or_none_passes() -> None:
    assert checked_key("k" * 255) == "k" * 255
    assert checked_key(None) is None


def test_the_accepted_answer_links_the_job() -> None:
    body = accepted_body("j1", "sensor_readings", "insert", 3)
    assert body == {"job_id": "j1", "state": "accepted", "target": "sensor_readings",
                    "operation": "insert", "records_received": 3, "links": job_links("j1")}
    assert job_links("j1") == {"self": f"{SUBMISSIONS_PATH}/j1",
                               "results": f"{SUBMISSIONS_PATH}/j1/results"}
