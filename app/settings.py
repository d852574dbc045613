"""One frozen settings object, fed by SLUICE_* environment variables with safe defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.targets import BUILTIN_TARGETS_DIR

ENV_PREFIX = "SLUICE_"


def env_var(field_name: str) -> str:
    """The environment variable that sets a Settings field."""
    return ENV_PREFIX + field_name.upper()


class Settings(BaseSettings):
    """Every tunable of Sluice; environment variable names appear only here.

    A service left unset (Kafka, PostgreSQL, Redis) means "use the embedded one"
    when started through ``sluice run``; worker and web processes require all three.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- where the three services are (None: the embedded stack provides them) ---
    kafka_bootstrap: str | None = Field(None, description="host:port[,host:port]")
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None

    # --- logging ---
    log_level: str = "INFO"
    # Kafka client, Faust and mode log every rebalance step at INFO: quiet unless debugging.
    library_log_level: str = "WARNING"

    # --- local state ---
    data_dir: Path = Path(".data")
    targets_dir: Path = BUILTIN_TARGETS_DIR

    # --- HTTP ingress ---
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    max_body_bytes: int = 100 * 1024 * 1024
    submission_timeout_s: float = 30.0
    idempotency_ttl_s: int = 24 * 3600
    max_concurrent_uploads: int = Field(200, ge=1)
    # Backpressure: refuse new submissions while this much is queued behind the ingress.
    max_queue_records: int = Field(5_000_000, ge=1)
    max_queue_age_s: float = Field(300.0, gt=0)
    # A job with no progress anywhere in the pipeline for this long is failed, not left hanging.
    job_stall_timeout_s: float = Field(300.0, gt=0)

    # --- topics ---
    topic_prefix: str = "sluice"
    partitions: int = Field(4, ge=1, le=256)

    # --- worker ---
    worker_id: str = "sluice-worker"
    worker_metrics_port: int = 8081
    batch_size: int = Field(1000, ge=500, le=2000)
    flush_interval_s: float = Field(0.2, gt=0, le=5)
    dedup_window_s: int = 24 * 3600
    # Bound on remembered record hashes per worker (about 150 bytes each in memory);
    # past it the oldest are forgotten first and the effective window shrinks.
    dedup_max_entries: int = 10_000_000
    table_store: str = "memory://"
    db_retry_max_s: float = 30.0
    # How long a job may sit in "receiving" (its records half produced) before the
    # worker decides its submitter died and fails it instead of waiting for ever.
    receiving_grace_s: float = 60.0

    def require_services(self) -> tuple[str, str, str]:
        """Return (kafka, database, redis) or fail with the variable to set."""
        missing = [
            name
            for name, value in (
                ("SLUICE_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
                ("SLUICE_DATABASE_URL", self.database_url),
                ("SLUICE_REDIS_URL", self.redis_url),
            )
            if not value
        ]
        if missing:
            raise SystemExit(
                f"set {', '.join(missing)} (or start everything with `sluice run`)"
            )
        assert self.kafka_bootstrap and self.database_url and self.redis_url
        return (
            self.kafka_bootstrap,
            self.database_url.get_secret_value(),
            self.redis_url.get_secret_value(),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
