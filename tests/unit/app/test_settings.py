"""Settings from SLUICE_* environment variables: defaults, parsing, secrets, bounds, services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from app.settings import ENV_PREFIX, Settings, env_var
from schemas.targets import BUILTIN_TARGETS_DIR

DATABASE_URL = "postgresql://sluice:hunter2-db@db.internal:5432/sluice"
REDIS_URL = "redis://:hunter2-redis@cache.internal:6379/0"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from an environment without SLUICE_* variables."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_env_var_names() -> None:
    assert ENV_PREFIX == "SLUICE_"
    assert env_var("batch_size") == "SLUICE_BATCH_SIZE"
    assert env_var("kafka_bootstrap") == "SLUICE_KAFKA_BOOTSTRAP"


def test_defaults() -> None:
    settings = Settings()
    assert settings.kafka_bootstrap is None
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.data_dir == Path(".data")
    assert settings.targets_dir == BUILTIN_TARGETS_DIR
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.topic_prefix == "sluice"
    assert settings.partitions == 4
    assert settings.batch_size == 1000
    assert settings.flush_interval_s == 0.2
    assert settings.idempotency_ttl_s == 24 * 3600
    assert settings.max_body_bytes == 100 * 1024 * 1024


def test_reads_sluice_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLUICE_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("SLUICE_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("SLUICE_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("SLUICE_BATCH_SIZE", "750")
    monkeypatch.setenv("SLUICE_PARTITIONS", "12")
    monkeypatch.setenv("SLUICE_FLUSH_INTERVAL_S", "0.5")
    monkeypatch.setenv("SLUICE_HTTP_PORT", "9999")
    monkeypatch.setenv("SLUICE_TOPIC_PREFIX", "acme")
    monkeypatch.setenv("SLUICE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SLUICE_SUBMISSION_TIMEOUT_S", "12.5")
    settings = Settings()
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.batch_size == 750
    assert settings.partitions == 12
    assert settings.flush_interval_s == 0.5
    assert settings.http_port == 9999
    assert settings.topic_prefix == "acme"
    assert settings.data_dir == tmp_path
    assert isinstance(settings.data_dir, Path)
    assert settings.submission_timeout_s == 12.5


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SIZE", "600")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "elsewhere:9092")
    settings = Settings()
    assert settings.batch_size == 1000
    assert settings.kafka_bootstrap is None


def test_secrets_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("SLUICE_REDIS_URL", REDIS_URL)
    settings = Settings()
    assert isinstance(settings.database_url, SecretStr)
    assert isinstance(settings.redis_url, SecretStr)
    assert settings.database_url.get_secret_value() == DATABASE_URL
    assert settings.redis_url.get_secret_value() == REDIS_URL
    for text in (repr(settings), str(settings), repr(settings.database_url)):
        assert "hunter2" not in text
    assert "hunter2" not in settings.model_dump_json()


@pytest.mark.parametrize("value", ["499", "2001", "0", "-1000"])
def test_batch_size_out_of_bounds_is_rejected(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SLUICE_BATCH_SIZE", value)
    with pytest.raises(ValidationError, match="batch_size"):
        Settings()


@pytest.mark.parametrize("value", [500, 2000])
def test_batch_size_bounds_are_inclusive(monkeypatch: pytest.MonkeyPatch, value: int) -> None:
    monkeypatch.setenv("SLUICE_BATCH_SIZE", str(value))
    assert Settings().batch_size == value


@pytest.mark.parametrize(("name", "value"), [
    ("SLUICE_PARTITIONS", "0"),
    ("SLUICE_PARTITIONS", "257"),
    ("SLUICE_FLUSH_INTERVAL_S", "0"),
    ("SLUICE_FLUSH_INTERVAL_S", "5.5"),
    ("SLUICE_HTTP_PORT", "eighty"),
])
def test_other_invalid_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.batch_size = 600  # type: ignore[misc]


def test_require_services_returns_plain_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("SLUICE_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("SLUICE_REDIS_URL", REDIS_URL)
    assert Settings().require_services() == ("k:9092", DATABASE_URL, REDIS_URL)


def test_require_services_names_every_missing_variable() -> None:
    with pytest.raises(SystemExit) as caught:
        Settings().require_services()
    message = str(caught.value.code)
    assert "SLUICE_KAFKA_BOOTSTRAP" in message
    assert "SLUICE_DATABASE_URL" in message
    assert "SLUICE_REDIS_URL" in message
    assert "sluice run" in message


@pytest.mark.parametrize("missing", ["KAFKA_BOOTSTRAP", "DATABASE_URL", "REDIS_URL"])
def test_require_services_names_only_the_missing_one(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    values = {"KAFKA_BOOTSTRAP": "k:9092", "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
    for name, value in values.items():
        if name != missing:
            monkeypatch.setenv(ENV_PREFIX + name, value)
    with pytest.raises(SystemExit) as caught:
        Settings().require_services()
    message = str(caught.value.code)
    assert message.startswith(f"set SLUICE_{missing} ")
    for name in values:
        if name != missing:
            assert f"SLUICE_{name}" not in message
    assert "hunter2" not in message


def test_empty_values_count_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("SLUICE_DATABASE_URL", "")
    monkeypatch.setenv("SLUICE_REDIS_URL", REDIS_URL)
    with pytest.raises(SystemExit, match="SLUICE_DATABASE_URL"):
        Settings().require_services()


def _secure(**overrides: object) -> Settings:
    values: dict[str, object] = {"auth_jwks_file": Path("/k/jwks.json"), "auth_issuer": "https://idp",
                                 "auth_audience": "sluice", "access_policy_file": Path("/k/p.toml")}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_security_defaults() -> None:
    settings = Settings()
    assert settings.auth_leeway_s == 30
    assert settings.auth_max_token_lifetime_s == 3600
    assert settings.auth_tenant_claim == "tenant"
    assert settings.auth_roles_claim == "roles"
    assert not settings.tls_enabled
    assert settings.kafka_security_protocol == "PLAINTEXT"
    # a 1,000,000-record submission, or 20 x 50,000 at once, fits the default record burst
    assert settings.rate_principal_records_burst >= 1_000_000
    assert settings.rate_principal_requests_burst >= 250


def test_a_web_process_without_keys_policy_or_tls_refuses_to_start() -> None:
    _secure().require_web_security()
    for overrides, message in (
        ({"auth_jwks_file": None}, "SLUICE_AUTH_JWKS_FILE"),
        ({"auth_jwks_url": "https://idp/jwks"}, "exactly one"),
        ({"auth_issuer": None}, "SLUICE_AUTH_ISSUER"),
        ({"access_policy_file": None}, "SLUICE_ACCESS_POLICY_FILE"),
        ({"http_host": "0.0.0.0"}, "refusing plain HTTP"),
        ({"tls_cert_file": Path("/c.pem")}, "both"),
    ):
        with pytest.raises(SystemExit, match=message):
            _secure(**overrides).require_web_security()
    _secure(http_host="0.0.0.0", tls_cert_file=Path("/c.pem"),
            tls_key_file=Path("/k.pem")).require_web_security()


def test_kafka_password_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    settings = Settings()
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()
