"""Settings: one frozen Struct, read from the environment (and an optional `.env`) once per process.

Both seed services' variable names are accepted as aliases, so their `.env` files keep working.
Nothing else in sesflow reads `os.environ`: `main()` calls `load_settings()` and passes the result
down explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from common.errors import ConfigError

DEFAULT_CERT_URL_PATTERN = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^?#]+\.pem"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Redis
    redis_url: str = ""
    redis_cluster: bool = False
    redis_prefix: str = "sesflow"
    send_partitions: int = 1

    # HTTP
    bind_host: str = "127.0.0.1"
    ingest_port: int = 3000
    tracker_port: int = 3001
    stats_port: int = 3002
    sender_metrics_port: int = 3003
    server_url: str = ""
    tracker_url: str = ""
    stats_url: str = ""
    api_key: str = ""
    jwt_secret: str = ""
    max_request_bytes: int = 10 * 1024 * 1024

    # Messages
    max_recipients: int = 50_000
    max_subject_bytes: int = 998
    max_content_bytes: int = 5 * 1024 * 1024
    content_ttl: int = 14 * 24 * 3600
    idempotency_ttl: int = 24 * 3600

    # SES
    email_sender: str = "noreply@example.com"
    aws_region: str = "us-east-1"
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_session_token: str = ""
    ses_endpoint_url: str = ""
    ses_configuration_set: str = ""
    ses_timeout: float = 10.0
    # The send path's client: "native" (sender.ses_client) or "boto3" (sender.ses_boto3, ~4x the
    # CPU per call; for comparison and where botocore's HTTP stack is required).
    ses_client: str = "native"

    # Sender
    # "bulk": the jobs of one message ready together go out in one SendBulkEmail (up to 50
    # recipients); "single": one SendEmail per recipient.
    send_mode: str = "bulk"
    email_rate: float = 14.0
    email_burst: float = 1.0
    sender_concurrency: int = 64
    max_attempts: int = 5
    on_ambiguous: str = "skip"
    reclaim_idle: float = 60.0
    shutdown_grace: float = 10.0

    # Tracking and feedback
    tracking_secret: str = ""
    allow_unsigned_opens: bool = False
    unsubscribe_mailto: str = ""
    sns_topic_arns: tuple[str, ...] = ()
    sns_cert_url_pattern: str = DEFAULT_CERT_URL_PATTERN
    sns_max_age: float = 3600.0

    # Stats
    stats_batch_size: int = 1000
    stats_flush_interval: float = 1.0

    # Process
    log_level: str = "info"
    log_format: str = "auto"
    sentry_dsn: str = ""
    sentry_environment: str = ""
    data_dir: str = ".sesflow"
    database_url: str = ""

    @property
    def public_url(self) -> str:
        """Base URL where recipients reach the tracker (pixel, clicks, unsubscribe)."""
        return (self.server_url or f"http://localhost:{self.tracker_port}").rstrip("/")


# Field name -> environment variables, canonical first, then the seeds' aliases.
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "ingest_port": ("INGEST_PORT", "SERVER_PORT"),
    "server_url": ("SERVER_URL", "SERVER_HOST"),
    "email_sender": ("EMAIL_SENDER", "AWS_SES_FROM_EMAIL"),
    "email_rate": ("EMAIL_RATE", "MAX_SEND_PER_SECOND"),
    "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "ses_configuration_set": ("SES_CONFIGURATION_SET", "SES_CONFIG_SET"),
    "data_dir": ("SESFLOW_DATA_DIR",),
}

TUPLE_FIELDS = {"sns_topic_arns"}


def env_names(field: str) -> tuple[str, ...]:
    return ENV_NAMES.get(field, (field.upper(),))


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; `#` comments, `export ` prefixes and quotes are allowed."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in {'"', "'"} and value[-1:] == value[:1] and len(value) >= 2:
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def settings_from_mapping(env: Mapping[str, str]) -> Settings:
    """Build Settings from a mapping of environment variables (the process env wins over .env)."""
    raw: dict[str, Any] = {}
    for field in Settings.__struct_fields__:
        for name in env_names(field):
            value = env.get(name)
            if value is None or value == "":
                continue
            if field in TUPLE_FIELDS:
                raw[field] = tuple(part.strip() for part in value.split(",") if part.strip())
            else:
                raw[field] = value
            break
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc
    return check(settings)


def check(settings: Settings) -> Settings:
    if settings.on_ambiguous not in {"skip", "resend"}:
        raise ConfigError("ON_AMBIGUOUS must be 'skip' or 'resend'")
    if settings.send_mode not in {"bulk", "single"}:
        raise ConfigError("SEND_MODE must be 'bulk' or 'single'")
    if settings.ses_client not in {"native", "boto3"}:
        raise ConfigError("SES_CLIENT must be 'native' or 'boto3'")
    if settings.email_rate <= 0:
        raise ConfigError("EMAIL_RATE must be positive")
    if settings.send_partitions < 1:
        raise ConfigError("SEND_PARTITIONS must be at least 1")
    if settings.sender_concurrency < 1:
        raise ConfigError("SENDER_CONCURRENCY must be at least 1")
    if settings.max_attempts < 1:
        raise ConfigError("MAX_ATTEMPTS must be at least 1")
    return settings


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: str | None = ".env"
) -> Settings:
    """Read settings once, in `main()`: `.env` first, then the real environment on top."""
    merged: dict[str, str] = {}
    if dotenv:
        merged.update(read_dotenv(Path(dotenv)))
    merged.update(os.environ if environ is None else environ)
    return settings_from_mapping(merged)
