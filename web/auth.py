"""Bearer-token authentication: who is calling, for which tenant, with which scopes.

Signature checking is PyJWT's; this module only decides what Sluice accepts: RS256 or
ES256 signatures from the configured key set (never ``none``, never an HMAC, which a
public key could forge), the configured issuer and audience, and short lifetimes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from web.jwks import KeySet

ALGORITHMS = ("RS256", "ES256")
"""Asymmetric only: an HS256 token signed with our public key must not verify."""

SCOPE_WRITE = "bulk:write"
SCOPE_READ = "bulk:read"
SCOPE_OPERATE = "ops:read"
"""Service-wide figures (every tenant's load) in GET /v1/overview and the dashboard."""


class AuthError(Exception):
    """The request is not authenticated; ``reason`` is short and safe to return."""

    def __init__(self, reason: str, *, token_given: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_given = token_given


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """What a valid token must satisfy besides its signature."""

    issuer: str
    audience: str
    leeway_s: float
    max_lifetime_s: int
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        raise AuthError("bearer token required", token_given=False)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("bearer token required", token_given=False)
    return token


def _strings(value: Any) -> frozenset[str]:
    """A claim given as a space-separated string (OAuth ``scope``) or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()


def numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A time claim as seconds, None when absent; AuthError unless a finite JSON number.

    RFC 7519 NumericDate is a number. PyJWT's checks accept ``"9999999999"`` (it calls
    ``int()``), so the lifetime arithmetic below must not trust the type it gets.
    """
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError(f"the {name!r} claim must be a number")
    return float(value)


def principal_from_claims(claims: dict[str, Any], policy: TokenPolicy, now: float) -> Principal:
    """Check lifetime and required claims of verified claims; build the Principal."""
    exp, iat = numeric_date(claims, "exp"), numeric_date(claims, "iat")
    nbf = numeric_date(claims, "nbf")
    if exp is None or iat is None:
        raise AuthError("token lacks the 'exp' or 'iat' claim")
    if iat > now + policy.leeway_s:
        raise AuthError("token issued in the future")
    starts = [iat] if nbf is None else [iat, nbf]
    if exp - min(starts) > policy.max_lifetime_s:
        raise AuthError("token lifetime exceeds the maximum")
    subject = claims.get("sub")
    tenant = claims.get(policy.tenant_claim)
    if not isinstance(subject, str) or not subject:
        raise AuthError("token has no subject")
    if not isinstance(tenant, str) or not tenant:
        raise AuthError("token has no tenant")
    scopes = _strings(claims.get("scope")) | _strings(claims.get("scp"))
    return Principal(subject, tenant, scopes, _strings(claims.get(policy.roles_claim)))


async def authenticate(token: str, keys: KeySet, policy: TokenPolicy,
                       now: float | None = None) -> Principal:
    """Verify a JWT and return its Principal, or raise AuthError with a short reason."""
    return (await _verify(token, keys, policy, now)).principal


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    kid: str
    key: jwt.PyJWK
    expires: float


async def _verify(token: str, keys: KeySet, policy: TokenPolicy, now: float | None) -> _Verified:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise AuthError("malformed token") from e
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise AuthError("token algorithm not allowed")
    if not isinstance(kid, str) or not kid:
        raise AuthError("token has no key id")
    key = await keys.get(kid)
    if key is None:
        raise AuthError("unknown signing key")
    if key.algorithm_name != alg:
        raise AuthError("token algorithm does not match its key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key=key.key, algorithms=[alg], audience=policy.audience, issuer=policy.issuer,
            leeway=policy.leeway_s,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError as e:
        raise AuthError("token expired") from e
    except jwt.ImmatureSignatureError as e:
        raise AuthError("token not yet valid") from e
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as e:
        raise AuthError("token not issued for this service") from e
    except jwt.MissingRequiredClaimError as e:
        raise AuthError(f"token lacks the {e.claim!r} claim") from e
    except jwt.PyJWTError as e:
        raise AuthError("invalid token") from e
    principal = principal_from_claims(claims, policy, time.time() if now is None else now)
    expires = numeric_date(claims, "exp")
    assert expires is not None  # required above
    return _Verified(principal, kid, key, expires)


class VerifiedTokens:
    """Tokens verified recently, so that a client polling its job is not verified afresh
    on every request: the signature check was a tenth of the web process's time under 40
    polling clients. A token is answered from here only before its ``exp`` and while its
    ``kid`` still names the very key it was verified with (a key rotated out of the set
    refuses its tokens at once); anything else is verified again. At most ``capacity``
    tokens are kept, the oldest dropped first.
    """

    def __init__(self, capacity: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._capacity = capacity
        self._clock = clock
        self._entries: dict[str, _Verified] = {}

    async def authenticate(self, token: str, keys: KeySet, policy: TokenPolicy) -> Principal:
        """authenticate(), from the cache when it may."""
        entry = self._entries.get(token)
        if entry is not None:
            if self._clock() < entry.expires and await keys.get(entry.kid) is entry.key:
                return entry.principal
            del self._entries[token]
        verified = await _verify(token, keys, policy, self._clock())
        if len(self._entries) >= self._capacity:
            del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[token] = verified
        return verified.principal


def missing_scopes(principal: Principal, required: Iterable[str]) -> list[str]:
    """Scopes the principal would need and does not have."""
    return [s for s in required if s not in principal.scopes]
