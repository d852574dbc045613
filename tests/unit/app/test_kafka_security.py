"""Kafka client security options: one helper feeds every client."""

from __future__ import annotations

import ssl

import pytest

from app.kafka import broker_credentials, security_options
from app.settings import Settings


def test_plaintext_by_default() -> None:
    assert security_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(Settings()) is None


def test_sasl_ssl() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
                        kafka_sasl_username="sluice-web", kafka_sasl_password="pw")
    options = security_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_username"] == "sluice-web"
    assert options["sasl_plain_password"] == "pw"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    credentials = broker_credentials(settings)
    assert credentials is not None and credentials.protocol.value == "SASL_SSL"


def test_sasl_without_credentials_refuses() -> None:
    with pytest.raises(SystemExit, match="SLUICE_KAFKA_SASL_USERNAME"):
        security_options(Settings(kafka_security_protocol="SASL_PLAINTEXT"))
