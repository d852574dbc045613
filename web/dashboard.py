"""The dashboard page (plain HTML, CSS and JavaScript from web/static/dashboard, no build
step) and GET /v1/overview, the load figures it shows beside the live job events.

The page itself is public and holds nothing: it asks for a token, keeps it in the tab's
sessionStorage and reads everything through /v1 with it, so it sees what the token sees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Final

from aiohttp import web

from app.store import jobs
from web.auth import SCOPE_OPERATE, SCOPE_READ, missing_scopes
from web.security import require_scope
from web.typedefs import pool_key
from web.views import json_answer

DASHBOARD_PATH = "/dashboard"
PAGE = "index.html"
ASSETS: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_MEDIA: Final = {PAGE: "text/html", **ASSETS}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""The page's Content-Security-Policy: its own files only, no inline code, no other origin."""


def _asset(name: str) -> bytes:
    return (resources.files("web") / "static" / "dashboard" / name).read_bytes()


def _answer(name: str) -> web.Response:
    return web.Response(body=_asset(name), content_type=_MEDIA[name],
                        charset="utf-8", headers={"Content-Security-Policy": PAGE_POLICY,
                                                  "Cache-Control": "no-cache"})


async def dashboard_page(request: web.Request) -> web.Response:
    """GET /dashboard: the page."""
    return _answer(PAGE)


def asset_view(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /dashboard/<name>: the page's script or style sheet (a route per file)."""

    async def view(request: web.Request) -> web.Response:
        return _answer(name)

    return view


async def get_overview(request: web.Request) -> web.Response:
    """GET /v1/overview: records queued and jobs running, per tenant and target, and the
    oldest unfinished job's age. The caller's tenant only, unless its token has ops:read."""
    principal = require_scope(request, SCOPE_READ)
    everyone = not missing_scopes(principal, [SCOPE_OPERATE])
    loads = await jobs.load_by_tenant_and_target(request.app[pool_key],
                                                 None if everyone else principal.tenant)
    by_tenant: dict[str, dict[str, float]] = {}
    by_target: dict[str, dict[str, float]] = {}
    for load in loads:
        for key, table in ((load.tenant, by_tenant), (load.target, by_target)):
            row = table.setdefault(key, {"running_jobs": 0, "queued_records": 0,
                                         "oldest_age_s": 0.0})
            row["running_jobs"] += load.running_jobs
            row["queued_records"] += load.queued_records
            row["oldest_age_s"] = max(row["oldest_age_s"], round(load.oldest_age_s, 3))
    return json_answer({
        "scope": "service" if everyone else "tenant",
        "queue": {"records": sum(load.queued_records for load in loads),
                  "running_jobs": sum(load.running_jobs for load in loads),
                  "oldest_age_s": round(max((load.oldest_age_s for load in loads), default=0.0), 3)},
        "tenants": [{"tenant": name, **row} for name, row in by_tenant.items()],
        "targets": [{"target": name, **row} for name, row in by_target.items()],
    })
