"""The HTTP security layer: who may call /v1, how often, and the headers every answer carries.

Authentication and the per-request rate limit run in a middleware for every ``/v1/``
path, before any view code; scopes, target rights and the record rate limit are checked
by the views, which know what is asked for. ``/healthz`` and ``/readyz`` stay open;
``/metrics`` is served on its own port (web/metrics_server.py), never on the API port.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from app import metrics
from app.settings import Settings
from web.access import AccessPolicy, is_allowed, limits_for, may_use_target, tenant_limits_for
from web.auth import (
    SCOPE_WRITE,
    AuthError,
    Principal,
    TokenPolicy,
    VerifiedTokens,
    bearer_token,
    missing_scopes,
)
from web.jwks import KeySet, file_loader, url_loader
from web.problems import Problem, ProblemType
from web.ratelimit import (
    Bucket,
    Decision,
    RateLimiter,
    Resource,
    Scope,
    bucket_key,
    over_burst,
    rate_limit_headers,
)

log = logging.getLogger(__name__)
audit_log = logging.getLogger("sluice.audit")

PROTECTED_PREFIX = "/v1/"
OPENAPI_PATH = "/v1/openapi.json"
PUBLIC_PATHS = frozenset({OPENAPI_PATH})
"""Under PROTECTED_PREFIX but open to all: the API's published contract."""
PRINCIPAL = "sluice.principal"
"""Request storage key of the authenticated Principal."""

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
HSTS = "max-age=31536000; includeSubDomains"


@dataclass
class Guard:
    """Everything the security layer needs, built once per web process."""

    keys: KeySet
    token_policy: TokenPolicy
    access: AccessPolicy
    settings: Settings
    limiter: RateLimiter | None = None
    tokens: VerifiedTokens = field(default_factory=VerifiedTokens)

    def _buckets(self, resource: Resource, principal: Principal) -> list[Bucket]:
        """The service's, the tenant's and the principal's bucket (tenant + sub: the same
        sub in another tenant is another principal)."""
        s, tenant = self.settings, principal.tenant
        own = limits_for(self.access, principal)
        whole = tenant_limits_for(self.access, tenant)
        if resource is Resource.REQUESTS:
            return [
                Bucket(bucket_key(resource), s.rate_requests_per_s, s.rate_requests_burst),
                Bucket(bucket_key(resource, tenant),
                       whole.requests_per_s or s.rate_tenant_requests_per_s,
                       whole.requests_burst or s.rate_tenant_requests_burst, Scope.TENANT),
                Bucket(bucket_key(resource, tenant, principal.subject),
                       own.requests_per_s or s.rate_principal_requests_per_s,
                       own.requests_burst or s.rate_principal_requests_burst, Scope.PRINCIPAL),
            ]
        return [
            Bucket(bucket_key(resource), s.rate_records_per_s, s.rate_records_burst),
            Bucket(bucket_key(resource, tenant),
                   whole.records_per_s or s.rate_tenant_records_per_s,
                   whole.records_burst or s.rate_tenant_records_burst, Scope.TENANT),
            Bucket(bucket_key(resource, tenant, principal.subject),
                   own.records_per_s or s.rate_principal_records_per_s,
                   own.records_burst or s.rate_principal_records_burst, Scope.PRINCIPAL),
        ]

    def request_charges(self, principal: Principal) -> list[tuple[Bucket, int]]:
        """One token from the service's, the tenant's and the principal's request bucket."""
        return [(bucket, 1) for bucket in self._buckets(Resource.REQUESTS, principal)]

    def record_charges(self, principal: Principal, records: int) -> list[tuple[Bucket, int]]:
        """``records`` tokens (the whole submission) from each of the three record buckets."""
        return [(bucket, records) for bucket in self._buckets(Resource.RECORDS, principal)]


def build_guard(settings: Settings, access: AccessPolicy) -> Guard:
    """The Guard for a web process; settings must have passed ``require_web_security``."""
    assert settings.auth_issuer and settings.auth_audience
    if settings.auth_jwks_file is not None:
        loader = file_loader(settings.auth_jwks_file)
    else:
        assert settings.auth_jwks_url
        loader = url_loader(settings.auth_jwks_url)
    keys = KeySet(loader, ttl_s=settings.auth_jwks_cache_s, min_refetch_s=settings.auth_jwks_min_refetch_s)
    policy = TokenPolicy(
        issuer=settings.auth_issuer, audience=settings.auth_audience,
        leeway_s=settings.auth_leeway_s, max_lifetime_s=settings.auth_max_token_lifetime_s,
        tenant_claim=settings.auth_tenant_claim, roles_claim=settings.auth_roles_claim,
    )
    return Guard(keys, policy, access, settings)


guard_key = web.AppKey("guard", Guard)


def unauthorized(error: AuthError) -> Problem:
    """401 with the RFC 6750 challenge; the reason is short and says nothing of keys."""
    challenge = 'Bearer realm="sluice"'
    if error.token_given:
        challenge += f', error="invalid_token", error_description="{error.reason}"'
    metrics.auth_failures.labels("401").inc()
    return Problem(401, "Unauthorized", error.reason, slug=ProblemType.UNAUTHORIZED,
                   headers={"WWW-Authenticate": challenge})


def forbidden(detail: str, slug: ProblemType, scope: str | None = None) -> Problem:
    """403: authenticated, but not allowed this."""
    headers = {}
    if scope:
        headers["WWW-Authenticate"] = f'Bearer realm="sluice", error="insufficient_scope", scope="{scope}"'
    metrics.auth_failures.labels("403").inc()
    return Problem(403, "Forbidden", detail, slug=slug, headers=headers)


def too_many_requests(decision: Decision, what: str) -> Problem:
    """429 with Retry-After and the RateLimit headers of the bucket that ran out."""
    return Problem(429, "Too many requests",
                   f"the {what} rate limit is exhausted; retry after the Retry-After delay",
                   slug=ProblemType.RATE_LIMITED, headers=rate_limit_headers(decision))


def principal_of(request: web.Request) -> Principal:
    """The authenticated principal (set by the middleware for every /v1 request)."""
    principal: Principal = request[PRINCIPAL]
    return principal


def require_scope(request: web.Request, scope: str) -> Principal:
    """The principal, if its token carries ``scope``; 403 otherwise."""
    return demand_scope(principal_of(request), scope, method=request.method, path=request.path)


def demand_scope(principal: Principal, scope: str, *, method: str, path: str) -> Principal:
    """``require_scope`` for any transport: ``method`` and ``path`` name the call in the audit."""
    if missing_scopes(principal, [scope]):
        if scope == SCOPE_WRITE:
            audit("bulk operation refused", principal, method=method, path=path,
                  outcome="insufficient-scope")
        raise forbidden(f"this requires the {scope} scope", slug=ProblemType.INSUFFICIENT_SCOPE, scope=scope)
    return principal


def audit(event: str, principal: Principal, **fields: Any) -> None:
    """One line per bulk operation: who, which tenant, what; never tokens nor record contents."""
    audit_log.info(event, extra={"audit": True, "subject": principal.subject,
                                 "tenant": principal.tenant, **fields})


def check_target(request: web.Request, principal: Principal, target: str, operation: str | None) -> None:
    """403 unless the policy grants the operation (or, if not yet known, any operation) on target."""
    authorize_target(request.app[guard_key], principal, target, operation)


def authorize_target(guard: Guard, principal: Principal, target: str, operation: str | None) -> None:
    """``check_target`` for any transport."""
    access = guard.access
    allowed = (is_allowed(access, principal, target, operation) if operation
               else may_use_target(access, principal, target))
    if not allowed:
        audit("bulk operation refused", principal, target=target, operation=operation,
              outcome="forbidden")
        raise forbidden(f"not allowed to {operation or 'use'} target {target!r}",
                        slug=ProblemType.TARGET_NOT_ALLOWED)


def exceeds_burst(bucket: Bucket, records: int) -> Problem:
    """413: a submission no bucket refill could ever admit. Charging only the burst would let
    one principal push any number of records at once; waiting would not help, so there is no
    Retry-After: the client must split it."""
    return Problem(413, "Submission exceeds the record burst",
                   f"the submission holds {records} records, more than the {bucket.burst}-record "
                   f"burst of the {bucket.scope} record rate limit; split it into submissions of "
                   f"at most {bucket.burst} records", slug=ProblemType.SUBMISSION_EXCEEDS_BURST,
                   records=records, burst=bucket.burst, scope=bucket.scope.value)


async def charge_records(request: web.Request, principal: Principal, records: int) -> None:
    """Debit the whole submission from the record buckets; 413 when it is larger than a
    bucket's burst, 429 when they run dry (and nothing produced either way)."""
    await charge_submission(request.app[guard_key], principal, records)


async def charge_submission(guard: Guard, principal: Principal, records: int) -> None:
    """``charge_records`` for any transport."""
    assert guard.limiter is not None
    charges = guard.record_charges(principal, records)
    too_large = over_burst(charges)
    if too_large is not None:
        audit("bulk operation refused", principal, records=records, outcome="exceeds-burst")
        raise exceeds_burst(too_large[0], records)
    decision = await guard.limiter.take(charges)
    if not decision.allowed:
        audit("bulk operation refused", principal, records=records, outcome="rate-limited")
        raise too_many_requests(decision, "records")


WEBSOCKET_BEARER_PREFIX = "bearer."


def _websocket_bearer(request: web.Request) -> str | None:
    """A browser cannot set Authorization on a WebSocket: it offers its token as a
    subprotocol, ``bearer.<token>``, beside ``sluice.v1`` (the one the server picks, so
    the token is never echoed back). Read as ``Bearer <token>``, on an upgrade only."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return None
    for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(WEBSOCKET_BEARER_PREFIX):
            return "Bearer " + protocol.removeprefix(WEBSOCKET_BEARER_PREFIX)
    return None


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every /v1 request: a valid bearer token, then a token from the request buckets."""
    if not request.path.startswith(PROTECTED_PREFIX) or request.path in PUBLIC_PATHS:
        return await handler(request)
    authorization = request.headers.get("Authorization") or _websocket_bearer(request)
    request[PRINCIPAL] = await authenticate_call(request.app[guard_key], authorization)
    return await handler(request)


async def authenticate_call(guard: Guard, authorization: str | None) -> Principal:
    """The caller of a /v1 request or a gRPC call: a valid bearer token (401 otherwise),
    then a token from its request buckets (429 otherwise)."""
    try:
        token = bearer_token(authorization)
        principal = await guard.tokens.authenticate(token, guard.keys, guard.token_policy)
    except AuthError as e:
        raise unauthorized(e) from None
    assert guard.limiter is not None
    decision = await guard.limiter.take(guard.request_charges(principal))
    if not decision.allowed:
        raise too_many_requests(decision, "request")
    return principal


def security_headers(tls: bool) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook: the headers go on every answer, streamed ones included."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if tls:
            response.headers.setdefault("Strict-Transport-Security", HSTS)

    return add
