"""Bearer parsing, claim checks and signature verification against an in-memory key set."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from web.auth import AuthError, TokenPolicy, authenticate, bearer_token, missing_scopes, principal_from_claims
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
