"""One frozen settings object, fed by SLUICE_* environment variables with safe defaults."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.input_policy import parse_input_operations
from app.logs import LogFormat
from schemas.targets import BUILTIN_TARGETS_DIR
from schemas.vocabulary import Operation

ENV_PREFIX = "SLUICE_"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
IDEMPOTENCY_LEASE_GRACE_S = 15
TENANT_SHARE_DIVISOR = 4
"""A tenant's default share of upload slots and queued records: a quarter of the service's."""


def env_var(field_name: str) -> str:
    """The environment variable that sets a Settings field."""
    return ENV_PREFIX + field_name.upper()


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def jwks_url_problem(url: str) -> str | None:
    """Why a key-set URL is refused, or None: https, or plain http to this host only.

    Whoever can alter a key set fetched in clear can sign tokens for every tenant.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "SLUICE_AUTH_JWKS_URL must be https: it is not a URL"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and _is_loopback(host):
        return None
    return ("SLUICE_AUTH_JWKS_URL must be https (plain http only to 127.0.0.1, ::1 or "
            "localhost): a key set fetched in clear could be replaced on the way")


class Settings(BaseSettings):
    """Every tunable of Sluice; environment variable names appear only here.

    A service left unset (Kafka, PostgreSQL, Redis) means "use the embedded one"
    when started through ``sluice run``; worker and web processes require all three.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- where the three services are (None: the embedded stack provides them) ---
    kafka_bootstrap: str | None = Field(None, description="host:port[,host:port]")
    # The broker `sluice run` starts when SLUICE_KAFKA_BOOTSTRAP is unset: "embedded" (a
    # Kafka-protocol broker from a pip wheel, memory only) or "kafka" (Apache Kafka, one
    # KRaft node under the data folder; needs a JDK and Maven, see deploy/kafka/pom.xml).
    broker: Literal["embedded", "kafka"] = "embedded"
    # Producers ask the broker for idempotence (no duplicate from a retried send). Real
    # Kafka has it; the embedded broker does not, and `sluice run` turns it off for it.
    kafka_idempotence: bool = True
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None

    # --- logging ---
    log_level: str = "INFO"
    # Kafka client, Faust and mode log every rebalance step at INFO, the embedded services
    # their command lines: quiet unless debugging.
    library_log_level: str = "WARNING"
    # auto: short text lines on a terminal, JSON lines otherwise; or json, or text.
    log_format: LogFormat = LogFormat.AUTO

    # --- local state ---
    data_dir: Path = Path(".data")
    targets_dir: Path = BUILTIN_TARGETS_DIR

    # --- HTTP ingress ---
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Prometheus metrics of the web process, on a port of their own (0: not served), as the
    # worker's: the API port answers clients only, and a scrape runs no query.
    web_metrics_port: int = Field(8082, ge=0, le=65535)
    # The gRPC BulkIngest service of the web process, on http_host, with the HTTP side's
    # TLS certificate when it has one (0: not served). A port already taken is logged as an
    # error and the web process serves HTTP without gRPC, as for its metrics port.
    grpc_port: int = Field(50051, ge=0, le=65535)
    # /readyz answers from a check at most this old: a flood of probes cannot turn into
    # a flood of PostgreSQL, Redis and Kafka round trips.
    readiness_cache_s: float = Field(2.0, ge=0)
    max_body_bytes: int = 100 * 1024 * 1024
    # One record (JSON element, NDJSON line, CSV row): these bound what a request holds in
    # memory. Bytes stay well under one Kafka message (16 MiB request, 900 kB envelope).
    max_record_bytes: int = Field(1024 * 1024, ge=1024, le=8 * 1024 * 1024)
    # Values in one record at any depth (or CSV columns): PostgreSQL tables have <= 1600.
    max_record_fields: int = Field(1600, ge=1, le=100_000)
    submission_timeout_s: float = 30.0
    # A payload whose envelopes pass this size is recorded as a job and produced while it
    # is parsed, so that the workers write it meanwhile (uncommitted until it is sealed);
    # a smaller one is produced once parsed whole, and refused it leaves no job behind.
    stream_after_bytes: int = Field(1024 * 1024, ge=0)
    idempotency_ttl_s: int = 24 * 3600
    max_concurrent_uploads: int = Field(200, ge=1)
    # Backpressure: refuse new submissions while this much is queued behind the ingress.
    max_queue_records: int = Field(5_000_000, ge=1)
    # One tenant's share of both (unset: a quarter of the service's), so that no tenant can
    # take every slot or fill the whole queue; over its share, a tenant alone gets 429.
    max_tenant_uploads: int | None = Field(None, ge=1)
    max_tenant_queue_records: int | None = Field(None, ge=1)
    # A job with no progress for this long is marked stalled (reason, gauge, error log);
    # it is never failed for it: its records were accepted.
    job_stall_timeout_s: float = Field(300.0, gt=0)
    # A results listing whose client takes longer than this to accept one page (about
    # 100 KB) is ended and its connection dropped: a client that stops reading holds a
    # socket and one page of memory for at most this long, never a database connection.
    results_send_timeout_s: float = Field(30.0, gt=0)
    # `Prefer: wait=N` (RFC 7240): a submission whose body is at most this many bytes
    # (decoded) is answered 200 with its outcome if its job ends within N seconds, N at
    # most prefer_wait_max_s; a bigger one, or a job still running then, gets the usual 202.
    prefer_wait_max_s: float = Field(30.0, ge=0, le=300)
    prefer_wait_max_body_bytes: int = Field(5 * 1024 * 1024, ge=0)
    # Failed result lines in such a 200, at most (the rest through the results link).
    prefer_wait_max_results: int = Field(1000, ge=0)
    # Live job events (WebSocket, Server-Sent Events): watched jobs are read every
    # events_tick_s (the most updates a watcher gets per job per second is its inverse); a
    # watcher more than events_buffer updates behind is dropped; an idle stream gets a
    # keep-alive every events_keepalive_s (proxies close silent connections).
    events_tick_s: float = Field(0.5, gt=0, le=10)
    events_buffer: int = Field(256, ge=1)
    events_keepalive_s: float = Field(15.0, gt=0)
    # The most event streams one web process holds open (503 past it).
    events_max_watchers: int = Field(1000, ge=1)

    # --- topics ---
    topic_prefix: str = "sluice"
    partitions: int = Field(4, ge=1, le=256)
    # Copies of each partition, and how many must hold a record before acks=all answers.
    # 1 and 1 suit the single embedded broker; production sets 3 and 2 (deploy/compose.yaml),
    # so one broker can be lost without losing a record or refusing writes.
    topic_replication_factor: int = Field(1, ge=1, le=32)
    topic_min_insync_replicas: int = Field(1, ge=1, le=32)

    # --- worker ---
    worker_id: str = "sluice-worker"
    worker_metrics_port: int = 8081
    # Worker processes `sluice run` (and `sluice bench`) start on this machine; they share
    # the records partitions. One worker process keeps about one core busy with Python and
    # leaves part of a second idle while PostgreSQL works: two applied a 1,000,000-record
    # payload 25 % sooner on 2 cores (README, Performance). The first serves metrics on
    # SLUICE_WORKER_METRICS_PORT, the others on free ports printed at start.
    local_workers: int = Field(2, ge=1, le=16)
    # Workers run at this lower CPU priority, so that on a machine they share with the web
    # process, parsing an upload (what a submitter waits for) goes first and the workers
    # write with what is left: a 100 MB payload's 202 came 17.0 s after its start at 0 and
    # 9.x s at 10 (README, Performance). Alone on a machine it changes nothing.
    worker_nice: int = Field(10, ge=0, le=19)
    batch_size: int = Field(1000, ge=500, le=2000)
    flush_interval_s: float = Field(0.2, gt=0, le=5)
    # Write a big job's envelopes while it is still received, in a transaction committed at
    # its seal (README, How it works). Off: every job's envelopes wait for its seal.
    early_writes: bool = True
    # How long the workers' fetches wait at the broker for records (fetch.max.wait.ms).
    # Kafka answers a waiting fetch as soon as records arrive, so this only sets how often
    # idle workers ask. The embedded broker answers only when it runs out: its stack sets
    # 25 ms, or it alone would bound how soon a job's records are seen (240 ms of a small
    # job's 260 at 500 ms).
    fetch_max_wait_ms: int = Field(500, ge=1, le=5000)
    db_retry_max_s: float = 30.0
    # A batch the database answers but keeps refusing (lost races, a missing table) is
    # tried this many times, then its records fail with code write_failed. A database that
    # cannot be reached is waited for without limit: outcomes can only be recorded there.
    write_attempts: int = Field(5, ge=1)
    # An envelope for a target this worker does not know (a rolling deploy adding one)
    # waits this long for it, re-reading the target files, before its records fail.
    unknown_target_wait_s: float = Field(60.0, ge=0)
    # How often the report outbox is looked at when it was empty: a finished job's report
    # reaches sluice.job-reports within about this long.
    report_poll_s: float = Field(0.5, gt=0)
    # Days of per-record outcomes kept in sluice_record_results (whole days are dropped).
    results_retention: int = Field(7, ge=1)

    # --- webhooks (web/webhooks.py registers endpoints, agents/deliver_webhooks.py sends) ---
    # Endpoints one tenant may register (each ended job costs one delivery per endpoint).
    webhook_max_endpoints: int = Field(10, ge=1, le=1000)
    # A failed attempt is retried after base, 2 x base, 4 x base... at most cap (less up to
    # a quarter, jitter), until max age after the delivery was queued; then it is failed.
    webhook_retry_base_s: float = Field(10.0, gt=0)
    webhook_retry_cap_s: float = Field(3600.0, gt=0)
    webhook_max_age_s: float = Field(24 * 3600.0, gt=0)
    # One attempt's whole request, connection to last byte read; also its lease (plus a
    # margin): a worker dying mid-request delays the delivery by about this much.
    webhook_timeout_s: float = Field(10.0, gt=0, le=300)
    # How often due deliveries are looked for when none was due; attempts in flight at
    # once per worker process.
    webhook_poll_s: float = Field(1.0, gt=0)
    webhook_concurrency: int = Field(16, ge=1, le=1000)
    # Endpoints on loopback, private or link-local addresses (checked at registration and
    # on every resolved address): off, so that a tenant cannot make the workers call the
    # service's own network. On for a test receiver on 127.0.0.1.
    webhook_private_destinations: bool = False
    # Days delivered and failed deliveries stay readable in the delivery log.
    webhook_log_retention_days: int = Field(7, ge=1)
    # What each producer input topic (sluice.input.<target>) accepts, as
    # "target=insert,upsert;other=insert" ("*" for every other target). Unset: inserts
    # only; a record asking for more fails with operation_not_allowed (app/input_policy.py).
    input_operations: Annotated[
        dict[str, frozenset[Operation]], NoDecode, BeforeValidator(parse_input_operations)
    ] = Field(default_factory=dict)
    # --- authentication and authorisation: always on for /v1, there is no off switch ---
    # Verification keys: a JWKS file or an https URL (one of them; `sluice run` generates a
    # local dev JWKS when neither is set).
    auth_jwks_file: Path | None = None
    auth_jwks_url: str | None = None
    # How long a fetched key set is trusted, and the least time between two fetches that
    # an unknown `kid` may trigger (so forged kids cannot make us hammer the URL).
    auth_jwks_cache_s: float = Field(300.0, gt=0)
    auth_jwks_min_refetch_s: float = Field(30.0, ge=0)
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_leeway_s: float = Field(30.0, ge=0, le=300)
    # Tokens are short-lived: exp - iat (and exp - nbf) over this is refused.
    auth_max_token_lifetime_s: int = Field(3600, gt=0)
    auth_tenant_claim: str = "tenant"
    auth_roles_claim: str = "roles"
    # TOML file: which subjects and roles may use which target and operation (deny by default).
    access_policy_file: Path | None = None

    # --- rate limits: token buckets in Redis, global and per principal ---
    # Generous enough for a benchmark polling 20 jobs at 20 Hz from one token.
    rate_requests_per_s: float = Field(5000.0, gt=0)
    rate_requests_burst: int = Field(10_000, ge=1)
    rate_principal_requests_per_s: float = Field(1000.0, gt=0)
    rate_principal_requests_burst: int = Field(5000, ge=1)
    rate_records_per_s: float = Field(1_000_000.0, gt=0)
    rate_records_burst: int = Field(20_000_000, ge=1)
    rate_principal_records_per_s: float = Field(200_000.0, gt=0)
    rate_principal_records_burst: int = Field(5_000_000, ge=1)
    # Every principal of one tenant together (per-tenant overrides go in the access policy).
    rate_tenant_requests_per_s: float = Field(2500.0, gt=0)
    rate_tenant_requests_burst: int = Field(5000, ge=1)
    rate_tenant_records_per_s: float = Field(500_000.0, gt=0)
    rate_tenant_records_burst: int = Field(10_000_000, ge=1)

    # --- TLS for the HTTP server (TLS 1.3 only when set) ---
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # --- Kafka client security (every producer, consumer, admin and the Faust app) ---
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    @model_validator(mode="after")
    def _min_insync_within_replicas(self) -> Settings:
        """More in-sync replicas than copies would refuse every acks=all write."""
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError("SLUICE_TOPIC_MIN_INSYNC_REPLICAS must not exceed "
                             "SLUICE_TOPIC_REPLICATION_FACTOR")
        return self

    @property
    def idempotency_lease_s(self) -> int:
        """How long an in-flight Idempotency-Key claim lives: a submission's deadline plus
        time to seal and answer. After a crash, a retry waits at most this long."""
        return int(self.submission_timeout_s) + IDEMPOTENCY_LEASE_GRACE_S

    @property
    def tenant_upload_slots(self) -> int:
        """Concurrent uploads one tenant may hold."""
        return self.max_tenant_uploads or max(1, self.max_concurrent_uploads // TENANT_SHARE_DIVISOR)

    @property
    def tenant_queue_records(self) -> int:
        """Queued records above which one tenant's new submissions are refused."""
        return self.max_tenant_queue_records or max(1, self.max_queue_records // TENANT_SHARE_DIVISOR)

    @property
    def tls_enabled(self) -> bool:
        """True when the web server has a certificate to speak TLS with."""
        return self.tls_cert_file is not None

    def require_web_security(self) -> None:
        """Refuse to start a web process that would be open or half-configured."""
        problems = []
        if (self.auth_jwks_file is None) == (self.auth_jwks_url is None):
            problems.append("set exactly one of SLUICE_AUTH_JWKS_FILE or SLUICE_AUTH_JWKS_URL "
                            "(`sluice run` generates a local dev key set)")
        if self.auth_jwks_url is not None and (problem := jwks_url_problem(self.auth_jwks_url)):
            problems.append(problem)
        if not self.auth_issuer or not self.auth_audience:
            problems.append("set SLUICE_AUTH_ISSUER and SLUICE_AUTH_AUDIENCE")
        if self.access_policy_file is None:
            problems.append("set SLUICE_ACCESS_POLICY_FILE (who may use which target)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append("set both SLUICE_TLS_CERT_FILE and SLUICE_TLS_KEY_FILE, or neither")
        if not self.tls_enabled and self.http_host not in LOOPBACK_HOSTS:
            problems.append(f"refusing plain HTTP on {self.http_host}: bearer tokens would cross "
                            "the network in clear; set SLUICE_TLS_CERT_FILE and SLUICE_TLS_KEY_FILE "
                            "(or terminate TLS in a proxy and bind to 127.0.0.1)")
        if problems:
            raise SystemExit("sluice web cannot start securely:\n  - " + "\n  - ".join(problems))

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
