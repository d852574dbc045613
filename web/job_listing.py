"""GET /v1/bulk-operations: the caller's tenant's jobs, newest first, a page at a time.

The page cursor is opaque to clients: the (created_at, job_id) of the last job shown,
so that a page starts exactly after it whatever was submitted meanwhile.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from urllib.parse import urlencode

from aiohttp import web

from app.store import jobs
from schemas.sql import storable
from schemas.vocabulary import JobState
from web.auth import SCOPE_READ
from web.problems import Problem, ProblemType
from web.security import require_scope
from web.typedefs import pool_key
from web.views import job_body, json_answer

DEFAULT_PAGE = 20
MAX_PAGE = 100
LISTED_STATES = tuple(state for state in JobState if state is not JobState.RECEIVING)
"""A submission still receiving is not a job yet for its client (it has had no 202)."""


def _bad(detail: str) -> Problem:
    return Problem(400, "Bad parameter", detail, slug=ProblemType.BAD_PARAMETER)


def encode_cursor(after: tuple[datetime, str]) -> str:
    """The cursor of the page that starts after this (created_at, job_id)."""
    return base64.urlsafe_b64encode(f"{after[0].isoformat()}|{after[1]}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, job_id) a cursor stands for; 400 for anything not made here."""
    try:
        created_at, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        moment = datetime.fromisoformat(created_at)
    except (binascii.Error, UnicodeError, ValueError):
        raise _bad("cursor is not one this service gave") from None
    if not job_id or moment.tzinfo is None or not storable(job_id):
        raise _bad("cursor is not one this service gave")
    return moment, job_id


def page_size(text: str | None) -> int:
    """``limit``: 1 to MAX_PAGE jobs, DEFAULT_PAGE when absent."""
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise _bad(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(text)


def state_filter(text: str | None) -> JobState | None:
    if text is None:
        return None
    if text not in LISTED_STATES:
        raise _bad(f"state must be one of {', '.join(LISTED_STATES)}")
    return JobState(text)


async def list_bulk_operations(request: web.Request) -> web.Response:
    """GET /v1/bulk-operations?limit=&state=&target=&cursor=: newest first, with a
    ``next`` link while older jobs remain."""
    principal = require_scope(request, SCOPE_READ)
    query = request.query
    limit = page_size(query.get("limit"))
    state = state_filter(query.get("state"))
    target = query.get("target")
    cursor = query.get("cursor")
    page = await jobs.list_for_tenant(
        request.app[pool_key], principal.tenant, limit=limit,
        after=decode_cursor(cursor) if cursor is not None else None, state=state, target=target)
    links = {"self": str(request.rel_url)}
    if page.after is not None:
        kept = {name: value for name, value in (("limit", str(limit)), ("state", state),
                                                 ("target", target)) if value is not None}
        links["next"] = "/v1/bulk-operations?" + urlencode({**kept, "cursor": encode_cursor(page.after)})
    return json_answer({"jobs": [job_body(request, job) for job in page.jobs], "links": links})
