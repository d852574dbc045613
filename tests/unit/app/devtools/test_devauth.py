"""The local dev key: generated once with a private file, reused, and only ever used locally."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from app.devtools.devauth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DevAuthError,
    dev_environment,
    dev_token,
    ensure_dev_auth,
    local_dev_auth,
    mint_token,
)
from app.settings import Settings
from web.auth import TokenPolicy, authenticate
from web.jwks import KeySet, file_loader


def test_generated_once_with_a_private_key_file(tmp_path: Path) -> None:
    dev = ensure_dev_auth(tmp_path)
    assert dev.key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "auth").stat().st_mode & 0o777 == 0o700
    jwks = json.loads(dev.jwks_file.read_text())
    assert [k["kid"] for k in jwks["keys"]] == [dev.kid]
    assert "d" not in jwks["keys"][0]  # the public half only
    assert ensure_dev_auth(tmp_path).kid == dev.kid  # reused, not regenerated
    env = dev_environment(dev)
    assert env["SLUICE_AUTH_ISSUER"] == DEV_ISSUER
    assert env["SLUICE_ACCESS_POLICY_FILE"].endswith("policy.toml")


async def test_a_minted_token_verifies_against_the_dev_jwks(tmp_path: Path) -> None:
    dev = ensure_dev_auth(tmp_path)
    token = dev_token(dev, Settings(data_dir=tmp_path))
    keys = KeySet(file_loader(dev.jwks_file), ttl_s=60, min_refetch_s=0)
    policy = TokenPolicy(DEV_ISSUER, DEV_AUDIENCE, leeway_s=30, max_lifetime_s=3600)
    principal = await authenticate(token, keys, policy)
    assert (principal.subject, principal.tenant) == ("dev", "dev")
    assert principal.scopes == {"bulk:write", "bulk:read", "ops:read"}
    assert principal.roles == {"dev"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= 3600


def test_tokens_are_refused_for_any_other_key_set(tmp_path: Path) -> None:
    with pytest.raises(DevAuthError, match="sluice run"):
        local_dev_auth(Settings(data_dir=tmp_path))
    dev = ensure_dev_auth(tmp_path)
    assert local_dev_auth(Settings(data_dir=tmp_path)).kid == dev.kid
    assert local_dev_auth(Settings(data_dir=tmp_path, auth_jwks_file=dev.jwks_file)).kid == dev.kid
    for settings in (
        Settings(data_dir=tmp_path, auth_jwks_url="https://idp.example/jwks"),
        Settings(data_dir=tmp_path, auth_jwks_file=tmp_path / "other.json"),
        Settings(data_dir=tmp_path, auth_issuer="https://idp.example"),
    ):
        with pytest.raises(DevAuthError, match="not the local"):
            local_dev_auth(settings)
    # a JWKS that no longer publishes the dev key (replaced by hand) is not the dev key
    dev.jwks_file.write_text(json.dumps({"keys": []}))
    with pytest.raises(DevAuthError, match="does not publish"):
        local_dev_auth(Settings(data_dir=tmp_path))


def test_mint_token_claims(tmp_path: Path) -> None:
    dev = ensure_dev_auth(tmp_path)
    token = mint_token(dev, subject="s", tenant="t", scopes=["bulk:read"], roles=[], ttl_s=60,
                       tenant_claim="org", now=1_000_000)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["org"] == "t" and claims["scope"] == "bulk:read" and claims["roles"] == []
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": dev.kid, "typ": "JWT"}
