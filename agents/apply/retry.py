"""Running a database step until it succeeds, by the error classes of app.store.errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app import metrics
from app.store.errors import ErrorKind, WriteGaveUp, classify, sqlstate_of
from app.store.positions import Fenced
from app.store.sink import JobNotSealed

log = logging.getLogger(__name__)
T = TypeVar("T")


async def until_done(
    attempt: Callable[[], Awaitable[T]], what: str, *, attempts: int, max_delay_s: float
) -> T:
    """Run a database step until it succeeds; nothing is skipped.

    A database that cannot be reached is waited for, with bounded exponential backoff:
    an outcome can only be recorded in the database, so giving up would lose the records.
    A database that answers but keeps refusing the step (lost races, a missing table) is
    retried ``attempts`` times, then WriteGaveUp. Fenced is not retried: the partition
    belongs to another worker now.
    """
    delay = 0.1
    refusals = 0
    while True:
        try:
            return await attempt()
        except Fenced:
            raise
        except JobNotSealed as e:  # cannot happen after the apply loop's check; waited for if it does
            metrics.write_retries.labels("job_receiving").inc()
            log.warning("job %s still receiving at write time; waiting", e)
        except Exception as e:
            kind = classify(e)
            if kind is ErrorKind.ROW:
                raise  # the sink isolates row errors itself; one here is a bug, not a retry
            if kind is not ErrorKind.UNAVAILABLE:
                refusals += 1
                if refusals >= attempts:
                    log.error("%s refused %d times (SQLSTATE %s): giving it up",
                              what, refusals, sqlstate_of(e))
                    raise WriteGaveUp(sqlstate_of(e), refusals) from e
            metrics.write_retries.labels(type(e).__name__).inc()
            log.warning("%s failed (%s, %s); retrying in %.1fs", what, type(e).__name__,
                        kind.value, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)
