"""The BulkIngest servicer: gRPC calls mapped onto what HTTP runs (web.intake for Submit, the
live job event hub for Watch), and problems onto gRPC statuses (web.grpc.status).

Each call is authenticated and charged to the request buckets as one HTTP request is
(``authorization`` metadata, web.security.authenticate_call).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Final, NoReturn

import grpc
from aiohttp import web

from app.store import jobs
from web.auth import SCOPE_READ, Principal
from web.grpc import bulk_ingest_pb2 as pb
from web.grpc import bulk_ingest_pb2_grpc
from web.grpc.messages import job_message, requested_operation
from web.grpc.status import status_code, status_message, trailing_metadata
from web.intake import IntakeServices, Order, take
from web.job_events import SlowSubscriber, UnknownJob, job_events_key
from web.payloads import MediaType, PayloadError
from web.problems import Problem, ProblemType, as_problem
from web.security import authenticate_call, demand_scope, guard_key
from web.typedefs import pool_key

log = logging.getLogger(__name__)

SUBMIT: Final = "/sluice.v1.BulkIngest/Submit"
WATCH: Final = "/sluice.v1.BulkIngest/Watch"
GRPC_METHOD: Final = "gRPC"
"""The audit's ``method`` of a gRPC call (its ``path`` is the full method name)."""

Context = Any
"""grpc.aio.ServicerContext (grpcio ships no type information)."""


def _authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


async def _opened(requests: AsyncIterable[pb.SubmitRequest]
                  ) -> tuple[pb.SubmitHeader, AsyncIterator[bytes]]:
    """The header, first of the stream, and the records' bytes after it."""
    stream = aiter(requests)
    first = await anext(stream, None)
    if first is None or first.WhichOneof("message") != "header":
        raise Problem(422, "Missing target",
                      "a Submit stream opens with its header, which names the target",
                      slug=ProblemType.MISSING_TARGET)
    return first.header, _records(stream)


async def _records(stream: AsyncIterator[pb.SubmitRequest]) -> AsyncIterator[bytes]:
    async for message in stream:
        if message.WhichOneof("message") != "records":
            raise PayloadError(400, "a Submit stream holds one header, first, then records only")
        yield message.records


async def _abort(context: Context, error: Exception, method: str) -> NoReturn:
    """End the call with the status the error maps to (web.grpc.status)."""
    problem = as_problem(error, method)
    await context.abort(status_code(problem), status_message(problem),
                        trailing_metadata(problem, method))
    raise AssertionError("context.abort returns only by raising")


class BulkIngestService(bulk_ingest_pb2_grpc.BulkIngestServicer):
    """Submit and Watch on the web application's resources."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def _caller(self, context: Context) -> Principal:
        return await authenticate_call(self._app[guard_key], _authorization(context))

    async def Submit(self, requests: AsyncIterable[pb.SubmitRequest],  # noqa: N802 (gRPC's name)
                     context: Context) -> pb.Job:
        """One submission, answered with its job once durable (HTTP's 202)."""
        try:
            principal = await self._caller(context)
            header, chunks = await _opened(requests)
            taken = await take(IntakeServices.of(self._app), principal, Order(
                chunks, MediaType.PROTOBUF.value, target=header.target or None,
                operation=requested_operation(header.operation),
                idempotency_key=(header.idempotency_key
                                 if header.HasField("idempotency_key") else None),
                retry_of=header.retry_of if header.HasField("retry_of") else None,
                method=GRPC_METHOD, path=SUBMIT))
            job = await jobs.get_for_tenant(self._app[pool_key], taken.job_id, principal.tenant)
        except Exception as e:
            await _abort(context, e, SUBMIT)
        if job is None:  # the job row is kept longer than any key's answer: not expected
            body = taken.answer.body
            job = {"job_id": taken.job_id, "target": body["target"],
                   "operation": body["operation"], "state": body["state"],
                   "records_received": body["records_received"], "succeeded": 0, "failed": 0,
                   "duplicates": 0, "aborted": 0}
        return job_message(job)

    async def Watch(self, request: pb.WatchRequest,  # noqa: N802 (gRPC's name)
                    context: Context) -> AsyncIterator[pb.Job]:
        """The job's current state, then each change (the hub's pace), the final one last."""
        try:
            principal = await self._caller(context)
            demand_scope(principal, SCOPE_READ, method=GRPC_METHOD, path=WATCH)
            async with self._app[job_events_key].job(request.job_id, principal.tenant) as updates:
                async for update in updates:
                    yield job_message(update.job, final=update.final)
        except UnknownJob:
            await _abort(context, Problem(404, "Job not found", f"no job {request.job_id!r}",
                                          slug=ProblemType.JOB_NOT_FOUND), WATCH)
        except SlowSubscriber:
            # Not a problem of the API: the client stopped reading. Watching again gives the
            # current state at once.
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "dropped: this watcher fell too far behind; watch again")
        except Exception as e:
            await _abort(context, e, WATCH)
