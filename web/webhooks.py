"""HTTP views of webhooks: a tenant registers, lists, reads and deletes its endpoints and
reads each one's delivery log. Thin: what may be registered is decided in
schemas/webhooks.py, rows are kept by app/store/webhooks.py, deliveries are sent by the
worker (agents/deliver_webhooks.py). Another tenant's endpoint is as unknown as none.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from aiohttp import web

from app.store import webhooks
from schemas.webhook_signature import new_secret
from schemas.webhooks import DeliveryState, WebhookEvent, url_problem
from web.auth import SCOPE_READ, SCOPE_WRITE
from web.job_listing import decode_cursor, encode_cursor, page_size
from web.payloads.records import PayloadProblem
from web.problems import Problem, ProblemType
from web.security import audit, require_scope
from web.typedefs import pool_key, settings_key
from web.views import json_answer

MAX_REGISTRATION_BYTES = 16 * 1024
"""A registration is a URL and a few event names: anything bigger is not one."""
DEFAULT_EVENTS = (WebhookEvent.JOB_ENDED,)
BASE_PATH = "/v1/webhooks"


def _links(endpoint_id: str) -> dict[str, str]:
    return {"self": f"{BASE_PATH}/{endpoint_id}", "deliveries": f"{BASE_PATH}/{endpoint_id}/deliveries"}


def webhook_body(endpoint: dict[str, Any]) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    return {"id": endpoint["endpoint_id"], "url": endpoint["url"], "events": endpoint["events"],
            "created_at": endpoint["created_at"], "links": _links(endpoint["endpoint_id"])}


def delivery_body(delivery: dict[str, Any]) -> dict[str, Any]:
    """One delivery of the log: its state, its attempts, and when the next one is due."""
    pending = delivery["state"] == DeliveryState.PENDING
    return {"id": delivery["delivery_id"], "job_id": delivery["job_id"],
            "event": delivery["event"], "state": delivery["state"],
            "attempts": delivery["attempts"], "last_status": delivery["last_status"],
            "last_error": delivery["last_error"],
            "next_attempt_at": delivery["next_attempt_at"] if pending else None,
            "created_at": delivery["created_at"], "delivered_at": delivery["delivered_at"],
            "history": orjson.Fragment(delivery["history"])}


def _bad_request(detail: str) -> Problem:
    return Problem(400, "Bad webhook request", detail, slug=ProblemType.BAD_WEBHOOK_REQUEST)


async def _registration(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, read up to MAX_REGISTRATION_BYTES (413 past it)."""
    body = bytearray()
    async for chunk in request.content.iter_chunked(4096):
        body += chunk
        if len(body) > MAX_REGISTRATION_BYTES:
            raise Problem(413, "Payload too large",
                          f"a webhook registration is at most {MAX_REGISTRATION_BYTES} bytes",
                          slug=PayloadProblem.TOO_LARGE)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad_request("the body is not JSON") from None
    if not isinstance(document, dict):
        raise _bad_request('the body must be a JSON object: {"url": ..., "events": [...]}')
    return document


def registered_url(document: dict[str, Any], *, allow_private: bool) -> str:
    """``url``, if it may be an endpoint; 422 with the reason otherwise."""
    url = document.get("url")
    problem = ("url is required and must be a string" if not isinstance(url, str)
               else url_problem(url, allow_private=allow_private))
    if problem is not None:
        raise Problem(422, "Bad webhook URL", problem, slug=ProblemType.BAD_WEBHOOK_URL)
    assert isinstance(url, str)
    return url


def registered_events(document: dict[str, Any]) -> list[WebhookEvent]:
    """``events`` (default: job.ended), each known, in order, without repeats; 422 otherwise."""
    events = document.get("events", list(DEFAULT_EVENTS))
    known = ", ".join(WebhookEvent)
    if not isinstance(events, list) or not events or not all(e in WebhookEvent.__members__.values()
                                                             for e in events):
        raise Problem(422, "Bad webhook events",
                      f"events must be a non-empty list of: {known}", slug=ProblemType.BAD_WEBHOOK_EVENTS)
    return list(dict.fromkeys(WebhookEvent(e) for e in events))


async def create_webhook(request: web.Request) -> web.Response:
    """POST /v1/webhooks: 201 with the endpoint and its signing secret, shown this once."""
    principal = require_scope(request, SCOPE_WRITE)
    settings = request.app[settings_key]
    document = await _registration(request)
    url = registered_url(document, allow_private=settings.webhook_private_destinations)
    events = registered_events(document)
    secret = new_secret()
    try:
        endpoint = await webhooks.create_endpoint(
            request.app[pool_key], principal.tenant, url, events, secret,
            max_per_tenant=settings.webhook_max_endpoints)
    except webhooks.EndpointLimitReached:
        raise Problem(409, "Too many webhooks",
                      f"a tenant has at most {settings.webhook_max_endpoints} webhook endpoints; "
                      "delete one first", slug=ProblemType.WEBHOOK_LIMIT_REACHED) from None
    audit("webhook registered", principal, webhook_id=endpoint["endpoint_id"],
          host=urlsplit(url).hostname, events=events)
    body = {**webhook_body(endpoint), "secret": secret}
    return json_answer(body, 201, {"Location": body["links"]["self"]})


async def list_webhooks(request: web.Request) -> web.Response:
    """GET /v1/webhooks: the tenant's endpoints, oldest first (at most the tenant's limit)."""
    principal = require_scope(request, SCOPE_READ)
    endpoints = await webhooks.list_endpoints(request.app[pool_key], principal.tenant)
    return json_answer({"webhooks": [webhook_body(e) for e in endpoints]})


async def _endpoint(request: web.Request, tenant: str) -> dict[str, Any]:
    endpoint_id = request.match_info["webhook_id"]
    endpoint = await webhooks.get_endpoint(request.app[pool_key], tenant, endpoint_id)
    if endpoint is None:
        raise Problem(404, "Webhook not found", f"no webhook {endpoint_id[:64]!r}",
                      slug=ProblemType.WEBHOOK_NOT_FOUND)
    return endpoint


async def get_webhook(request: web.Request) -> web.Response:
    """GET /v1/webhooks/{webhook_id}: one endpoint, without its secret."""
    principal = require_scope(request, SCOPE_READ)
    return json_answer(webhook_body(await _endpoint(request, principal.tenant)))


async def delete_webhook(request: web.Request) -> web.Response:
    """DELETE /v1/webhooks/{webhook_id}: 204; its pending deliveries are dropped with it."""
    principal = require_scope(request, SCOPE_WRITE)
    endpoint_id = request.match_info["webhook_id"]
    if not await webhooks.delete_endpoint(request.app[pool_key], principal.tenant, endpoint_id):
        raise Problem(404, "Webhook not found", f"no webhook {endpoint_id[:64]!r}",
                      slug=ProblemType.WEBHOOK_NOT_FOUND)
    audit("webhook deleted", principal, webhook_id=endpoint_id)
    return web.Response(status=204)


def _state_filter(text: str | None) -> DeliveryState | None:
    if text is None:
        return None
    if text not in DeliveryState.__members__.values():
        raise Problem(400, "Bad parameter", f"state must be one of {', '.join(DeliveryState)}",
                      slug=ProblemType.BAD_PARAMETER)
    return DeliveryState(text)


async def list_webhook_deliveries(request: web.Request) -> web.Response:
    """GET /v1/webhooks/{webhook_id}/deliveries?limit=&state=&cursor=: the delivery log,
    newest first, with a ``next`` link while older deliveries remain."""
    principal = require_scope(request, SCOPE_READ)
    query = request.query
    limit = page_size(query.get("limit"))
    state = _state_filter(query.get("state"))
    cursor = query.get("cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    endpoint = await _endpoint(request, principal.tenant)
    page = await webhooks.list_deliveries(request.app[pool_key], endpoint["endpoint_id"],
                                          limit=limit, after=after, state=state)
    links = {"self": str(request.rel_url)}
    if page.after is not None:
        kept = {name: value for name, value in (("limit", str(limit)), ("state", state))
                if value is not None}
        links["next"] = (f"{_links(endpoint['endpoint_id'])['deliveries']}?"
                         + urlencode({**kept, "cursor": encode_cursor(page.after)}))
    return json_answer({"deliveries": [delivery_body(d) for d in page.deliveries], "links": links})
