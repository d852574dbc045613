"""Bearer parsing, claim checks and signature verification against an in-memory key set."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from web.auth import (
    AuthError,
    TokenPolicy,
    VerifiedTokens,
    authenticate,
    bearer_token,
    missing_scopes,
    principal_from_claims,
)
from web.jwks import KeySet

POLICY = TokenPolicy(issuer="https://idp.test", audience="sluice", leeway_s=30, max_lifetime_s=3600)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks() -> dict[str, Any]:
    ec_jwk = ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True) | {"kid": "ec1", "alg": "ES256"}
    rsa_jwk = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True) | {"kid": "rsa1", "alg": "RS256"}
    return {"keys": [ec_jwk, rsa_jwk]}


def _keys() -> KeySet:
    async def load() -> dict[str, Any]:
        return _jwks()

    return KeySet(load, ttl_s=300, min_refetch_s=30)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": POLICY.issuer, "aud": POLICY.audience, "sub": "svc", "tenant": "acme",
              "scope": "bulk:read bulk:write", "roles": ["loader"], "iat": now, "exp": now + 300}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc ") == "abc"
    for bad in (None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer  "):
        with pytest.raises(AuthError) as e:
            bearer_token(bad)
        assert not e.value.token_given


async def test_es256_and_rs256_tokens_verify() -> None:
    for key, alg, kid in ((EC_KEY, "ES256", "ec1"), (RSA_KEY, "RS256", "rsa1")):
        token = jwt.encode(_claims(), key, algorithm=alg, headers={"kid": kid})
        principal = await authenticate(token, _keys(), POLICY)
        assert principal.subject == "svc" and principal.tenant == "acme"
        assert principal.scopes == {"bulk:read", "bulk:write"}
        assert principal.roles == {"loader"}


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"aud": "other"}, "token not issued for this service"),
    ({"iss": "https://evil.test"}, "token not issued for this service"),
    ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 600}, "token expired"),
    ({"exp": int(time.time()) + 7200}, "token lifetime exceeds the maximum"),
    ({"iat": None}, "token lacks the 'iat' claim"),
    ({"tenant": None}, "token has no tenant"),
])
async def test_claims_are_enforced(overrides: dict[str, Any], reason: str) -> None:
    token = jwt.encode(_claims(**overrides), EC_KEY, algorithm="ES256", headers={"kid": "ec1"})
    with pytest.raises(AuthError, match=reason):
        await authenticate(token, _keys(), POLICY)


async def test_leeway_admits_a_just_expired_token() -> None:
    now = int(time.time())
    token = jwt.encode(_claims(iat=now - 300, exp=now - 10), EC_KEY, algorithm="ES256",
                       headers={"kid": "ec1"})
    assert (await authenticate(token, _keys(), POLICY)).subject == "svc"


async def test_algorithm_confusion_and_unknown_keys_are_refused() -> None:
    wrong_alg = jwt.encode(_claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ec1"})
    with pytest.raises(AuthError, match="does not match"):
        await authenticate(wrong_alg, _keys(), POLICY)
    hs = jwt.encode(_claims(), "s" * 64, algorithm="HS256", headers={"kid": "ec1"})
    with pytest.raises(AuthError, match="algorithm not allowed"):
        await authenticate(hs, _keys(), POLICY)
    other = jwt.encode(_claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                       headers={"kid": "nope"})
    with pytest.raises(AuthError, match="unknown signing key"):
        await authenticate(other, _keys(), POLICY)
    forged = jwt.encode(_claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": "ec1"})
    with pytest.raises(AuthError, match="invalid token"):
        await authenticate(forged, _keys(), POLICY)


def test_lifetime_counts_from_nbf_or_iat_whichever_is_earlier() -> None:
    now = 1_000_000
    ok = principal_from_claims(_claims(iat=now, nbf=now + 100, exp=now + 3600), POLICY, now)
    assert ok.subject == "svc"
    with pytest.raises(AuthError):
        principal_from_claims(_claims(iat=now, nbf=now - 100, exp=now + 3600), POLICY, now)
    with pytest.raises(AuthError, match="future"):
        principal_from_claims(_claims(iat=now + 600, exp=now + 900), POLICY, now)


def test_scopes_from_scope_or_scp() -> None:
    principal = principal_from_claims(_claims(scope=None, scp=["bulk:read"]), POLICY, time.time())
    assert missing_scopes(principal, ["bulk:read", "bulk:write"]) == ["bulk:write"]


# --- issue 11: time claims of the wrong JSON type are a 401, never a 500 ------------------------

_NOW = int(time.time())


@pytest.mark.parametrize("overrides", [
    {"exp": "9999999999"},  # a numeric string: PyJWT's int() accepts it, arithmetic did not
    {"exp": str(_NOW + 300)},
    {"iat": str(_NOW)},
    {"nbf": str(_NOW)},
    {"nbf": "soon"},
    {"exp": True},
    {"iat": False},
    {"exp": 1e308, "iat": _NOW},
    {"exp": [_NOW + 300]},
    {"iat": {"at": _NOW}},
], ids=repr)
async def test_time_claims_must_be_json_numbers(overrides: dict[str, Any]) -> None:
    token = jwt.encode(_claims(**overrides), EC_KEY, algorithm="ES256", headers={"kid": "ec1"})
    with pytest.raises(AuthError):
        await authenticate(token, _keys(), POLICY)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_principal_from_claims_names_a_non_numeric_time_claim(claim: str) -> None:
    claims = _claims(**{claim: "1700000000", "nbf": _NOW if claim != "nbf" else "1700000000"})
    with pytest.raises(AuthError, match=f"'{claim}' claim must be a number"):
        principal_from_claims(claims, POLICY, _NOW)


def test_fractional_time_claims_are_numbers_too() -> None:
    principal = principal_from_claims(_claims(iat=_NOW + 0.5, exp=_NOW + 300.25), POLICY, _NOW)
    assert principal.subject == "svc"


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _rotating_keys(jwks: list[dict[str, Any]]) -> KeySet:
    """A key set whose document is whatever jwks[0] is when it is (re)loaded."""
    async def load() -> dict[str, Any]:
        return jwks[0]

    return KeySet(load, ttl_s=0, min_refetch_s=0)


async def test_a_cached_token_is_not_verified_again_until_its_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    tokens = VerifiedTokens(clock=clock)
    keys = _keys()
    token = jwt.encode(_claims(exp=int(clock.now) + 60), EC_KEY, algorithm="ES256", headers={"kid": "ec1"})
    assert (await tokens.authenticate(token, keys, POLICY)).subject == "svc"
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        assert (await tokens.authenticate(token, keys, POLICY)).tenant == "acme"
    assert calls == [], "a cached token was verified again"
    clock.now += 61  # past exp for the cache: verified again (by PyJWT, on the real clock)
    assert (await tokens.authenticate(token, keys, POLICY)).subject == "svc"
    assert calls == [1]


async def test_a_key_rotated_out_refuses_its_cached_tokens_at_once() -> None:
    jwks = [_jwks()]
    keys = _rotating_keys(jwks)
    tokens = VerifiedTokens()
    token = jwt.encode(_claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec1"})
    await tokens.authenticate(token, keys, POLICY)
    jwks[0] = {"keys": [k for k in _jwks()["keys"] if k["kid"] != "ec1"]}
    with pytest.raises(AuthError, match="unknown signing key"):
        await tokens.authenticate(token, keys, POLICY)
    # Another key under the same kid: the token is checked against it, and fails.
    other = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(other.public_key(), as_dict=True)
    jwks[0] = {"keys": [jwk | {"kid": "ec1", "alg": "ES256"}]}
    with pytest.raises(AuthError, match="invalid token"):
        await tokens.authenticate(token, keys, POLICY)


async def test_the_cache_keeps_at_most_its_capacity_and_refuses_what_it_never_verified() -> None:
    tokens = VerifiedTokens(capacity=2)
    keys = _keys()
    made = [jwt.encode(_claims(sub=f"s{n}"), EC_KEY, algorithm="ES256", headers={"kid": "ec1"})
            for n in range(3)]
    for token in made:
        await tokens.authenticate(token, keys, POLICY)
    assert len(tokens._entries) == 2 and made[0] not in tokens._entries
    forged = made[0][:-4] + ("AAAA" if not made[0].endswith("AAAA") else "BBBB")
    with pytest.raises(AuthError):
        await tokens.authenticate(forged, keys, POLICY)
