"""deploy/nginx.conf: TLS to the web processes is verified, not merely encrypted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.deploy.nginx_config import Block, parse

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
SECRETS_IN_NGINX = "/etc/nginx/secrets/"


@pytest.fixture(scope="module")
def config() -> Block:
    return parse((DEPLOY / "nginx.conf").read_text())


def _https_locations(config: Block) -> list[Block]:
    locations = [loc for loc in config.walk("location")
                 if (loc.own("proxy_pass") or ("",))[0].startswith("https://")]
    assert locations, "nginx.conf proxies nothing over https"
    return locations


def test_every_https_upstream_certificate_is_verified(config: Block) -> None:
    """Without proxy_ssl_verify nginx accepts any certificate, so a host on the network
    that answers for `web` would receive every bearer token."""
    for location in _https_locations(config):
        assert location.effective("proxy_ssl_verify") == ("on",), location.args


def test_verification_uses_a_mounted_trusted_ca_and_a_fixed_name(config: Block) -> None:
    for location in _https_locations(config):
        trusted = location.effective("proxy_ssl_trusted_certificate")
        assert trusted is not None and trusted[0].startswith(SECRETS_IN_NGINX), location.args
        # The default name is the upstream block's (sluice_web), which no certificate carries.
        name = location.effective("proxy_ssl_name")
        assert name is not None and name[0] not in ("", "$proxy_host"), location.args
        assert location.effective("proxy_ssl_server_name") == ("on",), location.args
        assert location.effective("proxy_ssl_protocols") == ("TLSv1.3",), location.args


def test_metrics_stay_internal(config: Block) -> None:
    metrics = [loc for loc in config.walk("location") if loc.args == ("/metrics",)]
    assert [m.own("deny") for m in metrics] == [("all",)]


@pytest.mark.parametrize("text", ["server { listen 443 ", "server { listen 443 }", "a b; }"])
def test_the_reader_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_inheritance_follows_nginx() -> None:
    config = parse('server { proxy_ssl_verify on; location / { proxy_pass https://u; }\n'
                   '  location /x { proxy_ssl_verify off; } # comment ; {\n}')
    first, second = config.walk("location")
    assert first.effective("proxy_ssl_verify") == ("on",)
    assert second.effective("proxy_ssl_verify") == ("off",)
