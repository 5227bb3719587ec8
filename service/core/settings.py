"""Configuration: the one place that reads the environment."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parents[2]  # service/core/settings.py -> the checkout

MIN_SECRET_BYTES = 32


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class EmbeddedMode(StrEnum):
    AUTO = "auto"  # local defaults when they answer, else embedded servers
    ALWAYS = "always"  # embedded servers even when local ones answer
    NEVER = "never"  # fail instead of starting embedded servers


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    env: Environment = Environment.DEVELOPMENT
    database_url: str = "postgresql://postgres@127.0.0.1:5432/taskmanager"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Sentinel: "host:port,host:port". Then the primary is the one the sentinels name for
    # REDIS_SENTINEL_MASTER, and REDIS_URL gives only the database number and the credentials.
    redis_sentinels: str | None = None
    redis_sentinel_master: str = "mymaster"
    embedded_servers: EmbeddedMode = EmbeddedMode.AUTO
    data_dir: Path = PROJECT_DIR / ".data"

    jwt_secret: SecretStr | None = None  # see service.api.security.signing_key
    jwt_expire_minutes: int = Field(default=30, gt=0, le=60 * 24 * 30)
    jwt_issuer: str = "taskmanager"
    jwt_audience: str = "taskmanager-api"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "no-reply@taskmanager.local"
    smtp_timeout: float = 10.0

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = "http://127.0.0.1:8000"  # where the API is reached: the base of the links in emails
    max_body_bytes: int = 64 * 1024
    # Every request is answered within this: 503 (Retry-After) when a dependency does not answer in time.
    request_timeout: float = Field(default=2.5, gt=0, le=300)
    redis_timeout: float = Field(default=1.0, gt=0, le=60)  # the API's Redis connect and command timeouts
    # A client must send each request's line and headers within this (service.api.protocol).
    header_timeout: float = Field(default=10.0, gt=0, le=300)
    db_pool_min: int = 0
    db_pool_max: int = 10
    password_hash_concurrency: int = 2  # password checks (logins) at a time, per API process
    new_password_hash_concurrency: int = 1  # new passwords hashed (registrations, changes) at a time
    access_log: bool = True
    # Brute force: failed logins per account per 15 minutes, and login attempts per client IP per minute.
    login_failures_per_account: int = Field(default=10, ge=1)
    login_attempts_per_ip: int = Field(default=30, ge=1)
    registrations_per_address_per_hour: int = Field(default=20, ge=1)
    # Jobs one user may submit per minute (429 beyond); 0 turns the quota off.
    enqueue_quota_per_minute: int = Field(default=600, ge=0)
    enqueue_quota_per_address_per_minute: int = Field(default=1200, ge=0)  # all accounts of one address
    # Item and task writes (create, change, delete) one user may make per minute (0: no quota).
    write_quota_per_minute: int = Field(default=300, ge=0)
    # Jobs one user may have waiting or running at once, on the fast queue and on the slow one (429 beyond).
    user_jobs_active: int = Field(default=1000, ge=0)  # 0: no cap
    user_slow_jobs_active: int = Field(default=10, ge=0)
    # Server-Sent Event streams open at once, per API process and per user (429 beyond).
    sse_max_streams: int = Field(default=1000, ge=1)
    sse_max_streams_per_user: int = Field(default=10, ge=1)
    report_retention_days: int = Field(default=7, ge=1, le=3650)  # reports are deleted after this
    report_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)  # a report stops here, marked truncated
    # Set (with the same value for every API process on a host) to serve all their HTTP metrics.
    prometheus_multiproc_dir: Path | None = None
    # /metrics wants `Authorization: Bearer <METRICS_TOKEN>`; unset, it answers only loopback clients in
    # development (and no one otherwise).
    metrics_token: Annotated[SecretStr | None, BeforeValidator(lambda value: value or None)] = Field(
        default=None, min_length=16
    )

    # The worker: see jobs/worker.py and the README's "Worker" section.
    worker_max_jobs: int = Field(default=50, ge=1, le=1000)
    worker_poll_delay: float = Field(default=0.05, gt=0, le=5)
    job_max_tries: int = Field(default=8, ge=1, le=50)
    retry_base_seconds: float = Field(default=2.0, gt=0, le=600)
    reminder_window_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    reminder_every_seconds: int = Field(default=60, ge=1, le=60)  # how often the due-reminder cron runs
    worker_shutdown_grace: int = Field(default=20, ge=0, le=3600)
    reconcile_seconds: float = Field(default=5.0, ge=0, le=3600)  # 0: no reconciler in this worker
    # Webhooks: see service/core/webhooks.py, jobs/webhooks.py and the README's "Webhooks" section.
    webhooks_per_user: int = Field(default=10, ge=0, le=1000)
    webhook_max_attempts: int = Field(default=10, ge=1, le=50)  # then the delivery is marked failed
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0, le=86400)  # doubles each attempt, with jitter
    webhook_retry_max_seconds: float = Field(default=4 * 3600.0, gt=0, le=7 * 86400)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)  # one attempt, redirects included
    webhook_max_redirects: int = Field(default=3, ge=0, le=10)  # each hop checked like the first
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)  # how soon a due delivery goes out
    webhook_concurrency: int = Field(default=20, ge=1, le=500)  # deliveries in flight per worker
    webhook_secret_grace_hours: float = Field(default=24.0, ge=0, le=24 * 30)  # the old secret signs too
    webhook_due_every_seconds: int = Field(default=60, ge=1, le=60)  # how often task.due is looked for
    # Host names, addresses and CIDR networks webhooks may reach although they are not public
    # (loopback, private, link-local...): "127.0.0.1,10.0.0.0/8,hooks.intranet". Empty: public only.
    webhook_allowed_hosts: str = ""
    db_connect_timeout: float = Field(default=2.0, gt=0, le=60)
    db_command_timeout: float = Field(default=10.0, gt=0, le=600)

    @property
    def sentinel_hosts(self) -> list[tuple[str, int]]:
        hosts = []
        for entry in (self.redis_sentinels or "").split(","):
            host, _, port = entry.strip().rpartition(":")
            if entry.strip():
                hosts.append((host.strip("[]") or "127.0.0.1", int(port or 26379)))
        return hosts

    @model_validator(mode="after")
    def _check_secret(self) -> Self:
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        if not secret and self.env is Environment.PRODUCTION:
            raise ValueError("JWT_SECRET is required when ENV=production")
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long")
        return self
