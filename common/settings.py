"""Settings: one frozen Struct, read from the environment (and an optional `.env`) once per process.

The older Go and Rust services' variable names are accepted as aliases, so their `.env` files
keep working. Nothing else in sesflow reads `os.environ`: `main()` calls `load_settings()` and
passes the result down explicitly.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import msgspec

from sesflow.common.addresses import InvalidMailbox, normalise_mailbox
from sesflow.common.errors import ConfigError
from sesflow.common.ses_setup import ses_setup_problem
from sesflow.common.weak_secrets import aws_placeholder, bad_sentry_dsn, weakness

# Only SNS's own regional hosts, with a label shaped like a region (`us-east-1`, `us-gov-west-1`;
# `cn-north-1` on `.com.cn`): a looser label such as `[a-z0-9-]+` also matches S3's
# virtual-hosted addresses (`sns.s3.amazonaws.com` is the bucket `sns`), where anyone can serve
# a certificate. The path is the one SNS publishes its certificates under.
SNS_CERT_HOST = (
    r"sns\.(?:(?!cn-)[a-z]{2}(?:-gov)?-[a-z]+-[0-9]{1,2}\.amazonaws\.com"
    r"|cn-[a-z]+-[0-9]{1,2}\.amazonaws\.com\.cn)"
)
DEFAULT_CERT_URL_PATTERN = rf"https://{SNS_CERT_HOST}/SimpleNotificationService-[0-9a-f]+\.pem"

# `SNS_TOPIC_ARNS=*`: the explicit opt-out of the topic check (any SNS topic in the world).
ANY_TOPIC = "*"
SNS_TOPIC_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]{1,256}")
SIGNATURE_VERSIONS = ("1", "2")

# Settings whose value is a credential: never shown (repr, logs, Sentry, `sesflow up`).
SECRET_FIELDS = frozenset(
    {
        "api_key",
        "jwt_secret",
        "tracking_secret",
        "aws_secret_access_key",
        "aws_session_token",
        "sentry_dsn",
    }
)
# Secrets that guard sesflow's own doors: a placeholder or a short value is refused at start.
CHECKED_SECRETS = ("tracking_secret", "api_key", "jwt_secret")
# Roles that serve the API (send, cancel, suppressions, stats) and need auth off loopback.
AUTHENTICATED_ROLES = ("ingest", "stats")
REDACTED = "***"

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@/\s]*@")


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it replaced: `redis://:***@host:6379/0`."""
    return _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)


def redacted_value(field: str, value: Any) -> Any:
    """The value of a setting as it may be shown: secrets as '***', URLs without a password."""
    if field in SECRET_FIELDS or field.endswith(("_secret", "_password", "_token", "_key")):
        return REDACTED if value else value
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


# Settings whose value is one of a fixed set: msgspec validates them, case-insensitively.
SesClientName = Literal["native", "boto3"]
SendMode = Literal["bulk", "single"]
OnAmbiguous = Literal["skip", "resend"]
SesIdLinks = Literal["auto", "always", "never"]
LogLevel = Literal["debug", "info", "warning", "warn", "error", "critical"]
LogFormat = Literal["auto", "json", "console"]
OnOff = Literal["on", "off"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Redis
    redis_url: str = ""
    redis_cluster: bool = False
    redis_prefix: str = "sesflow"
    send_partitions: int = 1
    # Seconds before a Redis command, or a connection attempt, is given up: a stuck Redis
    # surfaces as an error (503, a paused loop, a failing /health) instead of a hang.
    redis_socket_timeout: float = 10.0
    redis_connect_timeout: float = 2.0
    # Connections one client (one process) may open: a flood of HTTP requests waits for a free
    # one (then 503) instead of opening thousands and exhausting Redis's maxclients for every
    # role.
    redis_max_connections: int = 256

    # HTTP
    bind_host: str = "127.0.0.1"
    ingest_port: int = 3000
    tracker_port: int = 3001
    stats_port: int = 3002
    sender_metrics_port: int = 3003
    server_url: str = ""
    tracker_url: str = ""
    stats_url: str = ""
    # Where the dashboard (served by stats) reaches the ingest API for its pause buttons.
    ingest_url: str = ""
    api_key: str = ""
    jwt_secret: str = ""
    # A token's `exp` may be at most this far ahead (seconds; 0: no limit). Optional claims that,
    # when set, a token must carry with exactly this value.
    jwt_max_age: float = 24 * 3600.0
    jwt_audience: str = ""
    jwt_issuer: str = ""
    # Serve ingest and stats on a non-loopback BIND_HOST without API_KEY or JWT_SECRET.
    allow_unauthenticated: bool = False
    # Room for one message of MAX_MESSAGE_BYTES (its attachments) plus the JSON around it.
    max_request_bytes: int = 48 * 1024 * 1024
    # One POST is one transaction: these bound its size (and its idempotency record).
    max_messages_per_request: int = 1000
    max_recipients_per_request: int = 100_000

    # Messages
    max_recipients: int = 50_000
    max_subject_bytes: int = 998
    max_content_bytes: int = 5 * 1024 * 1024
    # One data object (a message's defaults, or one recipient's own), as compact JSON.
    max_data_bytes: int = 16 * 1024
    # SESv2's limit on a whole message, attachments included, after base64 encoding (40 MB).
    max_message_bytes: int = 40 * 1024 * 1024
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
    # Per-message SES setup (`common.ses_setup`): the configuration sets and SES tenants a message
    # may name, and which From identities each tenant may send as.
    ses_configuration_sets: tuple[str, ...] = ()
    ses_tenants: tuple[str, ...] = ()
    ses_tenant_identities: str = ""
    ses_timeout: float = 10.0
    # The send path's client: "native" (sender.ses_client) or "boto3" (sender.ses_boto3, ~4x the
    # CPU per call; for comparison and where botocore's HTTP stack is required).
    ses_client: SesClientName = "native"

    # Sender
    # "bulk": the jobs of one message ready together go out in one SendBulkEmail (up to 50
    # recipients); "single": one SendEmail per recipient.
    send_mode: SendMode = "bulk"
    email_rate: float = 14.0
    email_burst: float = 1.0
    # Two full SendBulkEmail calls (50 recipients each) in flight per replica: with 64, every
    # read of one message's jobs split into a call of 50 and one of 14.
    sender_concurrency: int = 100
    max_attempts: int = 5
    on_ambiguous: OnAmbiguous = "skip"
    # SES MessageId -> request id links, for feedback that carries no `sesflow-rid` tag
    # (identity notifications): "auto" writes them unless the tracker sees only tagged feedback.
    ses_id_links: SesIdLinks = "auto"
    reclaim_idle: float = 60.0
    shutdown_grace: float = 10.0
    # Seconds between probes of a setup paused by a setup fault (one real send cluster-wide).
    setup_probe_interval: float = 30.0
    # The share of the rate transactional mail may take while bulk mail is waiting.
    transactional_max_share: float = 0.8

    # Reputation guard: a topic pauses itself (and, over the last 24 h of every topic, all bulk
    # sending) before SES reviews the account (5% bounces, 0.1% complaints).
    guard: OnOff = "on"
    guard_min_sent: int = 100
    guard_bounce_rate: float = 0.05
    guard_complaint_min_sent: int = 1000
    guard_complaint_rate: float = 0.001
    guard_account_bounce_rate: float = 0.08
    guard_account_complaint_rate: float = 0.004

    # Tracking and feedback
    tracking_secret: str = ""
    allow_unsigned_opens: bool = False
    unsubscribe_mailto: str = ""
    # The domain of bulk mail's `List-Id: <list.domain>` (RFC 2919); "" = the From domain.
    list_id_domain: str = ""
    # Mirror SES's account-level suppression list: import it (`sesflow suppressions sync`, and
    # every SES_SUPPRESSION_SYNC_INTERVAL seconds in the sender's upkeep) and copy the API's PUT
    # and DELETE of /v1/suppressions/{email} to it.
    ses_suppression_sync: bool = False
    ses_suppression_sync_interval: float = 3600.0
    sns_topic_arns: tuple[str, ...] = ()
    sns_cert_url_pattern: str = DEFAULT_CERT_URL_PATTERN
    sns_signature_versions: tuple[str, ...] = SIGNATURE_VERSIONS
    sns_max_age: float = 3600.0
    # An address is suppressed (reason `soft_bounce`) at its SOFT_BOUNCE_LIMIT-th transient
    # bounce within SOFT_BOUNCE_WINDOW seconds; 0 turns the rule off.
    soft_bounce_limit: int = 3
    soft_bounce_window: int = 7 * 24 * 3600

    # Stats
    stats_batch_size: int = 1000
    stats_flush_interval: float = 1.0
    # Seconds a topic's counters and series are kept after its last event (400 days).
    stats_retention: int = 400 * 24 * 3600

    # Webhooks (stats): "off" reads no events for them (no `webhooks` group is created).
    webhooks: OnOff = "on"
    # Deliver to private, loopback, link-local... addresses (and over plain http): tests only.
    webhook_allow_private: bool = False
    # Seconds a delivery is retried before it is dead-lettered (24 h).
    webhook_retry_for: float = 24 * 3600.0
    # Seconds one call may take, and calls in flight to one endpoint at a time (1: in order).
    webhook_timeout: float = 10.0
    webhook_concurrency: int = 4
    # Seconds of failures without a success before an endpoint is disabled (5 days).
    webhook_disable_after: float = 5 * 24 * 3600.0
    # Seconds the previous secret still signs after a rotation (24 h).
    webhook_rotation_grace: float = 24 * 3600.0

    # Process
    log_level: LogLevel = "info"
    # "auto": JSON unless on a terminal.
    log_format: LogFormat = "auto"
    sentry_dsn: str = ""
    sentry_environment: str = ""
    data_dir: str = ".sesflow"

    # History archive (stats writes every event into SQL; the look-ups read it)
    archive: OnOff = "on"
    # sqlite:///<path> (default: <SESFLOW_DATA_DIR>/archive.db) or postgresql://user:pw@host/db.
    archive_url: str = ""
    # Events written per transaction (and read per XREADGROUP).
    archive_batch_size: int = 5000

    def __repr__(self) -> str:
        """Secrets as '***' and passwords out of URLs: a repr ends up in logs, tracebacks and
        Sentry."""
        fields = ", ".join(
            f"{name}={redacted_value(name, getattr(self, name))!r}"
            for name in self.__struct_fields__
        )
        return f"Settings({fields})"

    __str__ = __repr__

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [
            (name, redacted_value(name, getattr(self, name))) for name in self.__struct_fields__
        ]

    @property
    def public_url(self) -> str:
        """Base URL where recipients reach the tracker (pixel, clicks, unsubscribe)."""
        return (self.server_url or f"http://localhost:{self.tracker_port}").rstrip("/")


# Field name -> environment variables, canonical first, then the older services' aliases.
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "ingest_port": ("INGEST_PORT", "SERVER_PORT"),
    "server_url": ("SERVER_URL", "SERVER_HOST"),
    "email_sender": ("EMAIL_SENDER", "AWS_SES_FROM_EMAIL"),
    "email_rate": ("EMAIL_RATE", "MAX_SEND_PER_SECOND"),
    "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "ses_configuration_set": ("SES_CONFIGURATION_SET", "SES_CONFIG_SET"),
    "data_dir": ("SESFLOW_DATA_DIR",),
    # The older services' DATABASE_URL (e.g. `sqlite://sqlite3.db`) names the archive.
    "archive_url": ("ARCHIVE_URL", "DATABASE_URL"),
}

TUPLE_FIELDS = {
    "sns_topic_arns",
    "sns_signature_versions",
    "ses_configuration_sets",
    "ses_tenants",
}

# Field name -> the values a Literal field allows.
CHOICES: dict[str, tuple[str, ...]] = {
    field: get_args(hint)
    for field, hint in get_type_hints(Settings).items()
    if getattr(hint, "__origin__", None) is Literal
}
_ERROR_PATH = re.compile(r"^(?P<what>.*) - at `\$\.(?P<field>[a-z0-9_]+)`$", re.DOTALL)


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
    source: dict[str, str] = {}  # field -> the variable it was read from
    for field in Settings.__struct_fields__:
        for name in env_names(field):
            value = env.get(name)
            if value is None or value == "":
                continue
            if field in TUPLE_FIELDS:
                raw[field] = tuple(part.strip() for part in value.split(",") if part.strip())
            elif field in CHOICES:
                raw[field] = value.strip().lower()
            else:
                raw[field] = value
            source[field] = name
            break
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(invalid_setting(exc, raw, source)) from exc
    return check(settings)


def invalid_setting(
    exc: msgspec.ValidationError, raw: Mapping[str, Any], source: Mapping[str, str]
) -> str:
    """msgspec's error in the user's words: the variable's name, and the allowed values."""
    match = _ERROR_PATH.match(str(exc))
    if match is None:
        return f"invalid setting: {exc}"
    field = match["field"]
    name = source.get(field) or env_names(field)[0]
    if field in CHOICES:
        allowed = ", ".join(repr(choice) for choice in CHOICES[field])
        return f"{name} must be one of {allowed}, not {str(raw.get(field))[:100]!r}"
    return f"invalid setting {name}: {match['what']}"


def check(settings: Settings) -> Settings:
    """`settings` with the sender address normalised, or ConfigError naming the first rule
    (`CHECKS`, in order) it breaks."""
    for rule in CHECKS:
        reason = rule(settings)
        if reason:
            raise ConfigError(reason)
    try:
        sender = normalise_mailbox(settings.email_sender)
    except InvalidMailbox as exc:
        raise ConfigError(f"EMAIL_SENDER {settings.email_sender[:100]!r} {exc}") from exc
    return msgspec.structs.replace(settings, email_sender=sender)


# A rule: the reason a setting is refused, or None (or "") when it passes.
Rule = Callable[[Settings], str | None]


def refuse(bad: Callable[[Settings], bool], reason: str) -> Rule:
    """A rule that gives `reason` when `bad` holds."""
    return lambda settings: reason if bad(settings) else None


def first_reason(reasons: Iterable[str | None]) -> str | None:
    return next((reason for reason in reasons if reason), None)


def weak_secret(settings: Settings) -> str | None:
    return first_reason(
        weakness(env_names(field)[0], getattr(settings, field)) for field in CHECKED_SECRETS
    )


def aws_placeholders(settings: Settings) -> str | None:
    return first_reason(
        aws_placeholder(env_names(field)[0], getattr(settings, field))
        for field in ("aws_access_key_id", "aws_secret_access_key")
    )


def positive_request_limits(settings: Settings) -> str | None:
    names = ("max_messages_per_request", "max_recipients_per_request", "max_recipients")
    return first_reason(
        f"{name.upper()} must be at least 1" for name in names if getattr(settings, name) < 1
    )


def guard_rates(settings: Settings) -> str | None:
    names = (
        "guard_bounce_rate",
        "guard_complaint_rate",
        "guard_account_bounce_rate",
        "guard_account_complaint_rate",
    )
    return first_reason(
        f"{name.upper()} must be a fraction above 0 and at most 1"
        for name in names
        if not 0 < getattr(settings, name) <= 1
    )


def ses_setup_rules(settings: Settings) -> str | None:
    return ses_setup_problem(
        settings.ses_configuration_sets, settings.ses_tenants, settings.ses_tenant_identities
    )


def sns_rules(settings: Settings) -> str | None:
    check_sns(settings)  # raises ConfigError itself
    return None


# Every rule `check` applies, in the order they are reported. A new setting's rule is one row.
CHECKS: tuple[Rule, ...] = (
    refuse(lambda s: s.email_rate <= 0, "EMAIL_RATE must be positive"),
    refuse(
        lambda s: not 0 < s.transactional_max_share <= 1,
        "TRANSACTIONAL_MAX_SHARE must be above 0 and at most 1",
    ),
    guard_rates,
    refuse(lambda s: s.send_partitions < 1, "SEND_PARTITIONS must be at least 1"),
    refuse(lambda s: s.sender_concurrency < 1, "SENDER_CONCURRENCY must be at least 1"),
    positive_request_limits,
    refuse(lambda s: s.max_attempts < 1, "MAX_ATTEMPTS must be at least 1"),
    refuse(
        lambda s: s.jwt_max_age < 0,
        "JWT_MAX_AGE must be 0 (no limit) or a positive number of seconds",
    ),
    weak_secret,
    aws_placeholders,
    lambda s: bad_sentry_dsn(s.sentry_dsn),
    refuse(lambda s: not s.setup_probe_interval > 0, "SETUP_PROBE_INTERVAL must be positive"),
    sns_rules,
    ses_setup_rules,
    refuse(lambda s: s.stats_retention < 1, "STATS_RETENTION must be at least 1 (seconds)"),
    refuse(
        lambda s: s.soft_bounce_limit < 0,
        "SOFT_BOUNCE_LIMIT must be 0 (off) or a number of transient bounces",
    ),
    refuse(lambda s: s.soft_bounce_window < 1, "SOFT_BOUNCE_WINDOW must be at least 1 (seconds)"),
    # A sender or stats process keeps one blocking read per partition: leave room beside them.
    refuse(
        lambda s: s.redis_max_connections < s.send_partitions + 8,
        "REDIS_MAX_CONNECTIONS must be at least SEND_PARTITIONS + 8",
    ),
    refuse(lambda s: s.redis_connect_timeout <= 0, "REDIS_CONNECT_TIMEOUT must be positive"),
    refuse(lambda s: s.webhook_timeout <= 0, "WEBHOOK_TIMEOUT must be positive"),
    refuse(lambda s: s.webhook_concurrency < 1, "WEBHOOK_CONCURRENCY must be at least 1"),
    refuse(lambda s: s.webhook_retry_for < 0, "WEBHOOK_RETRY_FOR must be 0 or more (seconds)"),
    refuse(lambda s: s.archive_batch_size < 1, "ARCHIVE_BATCH_SIZE must be at least 1"),
    lambda s: archive_url_problem(s.archive_url) if s.archive == "on" else None,
)


ARCHIVE_SCHEMES = ("sqlite", "postgresql", "postgres")


def archive_url_problem(url: str) -> str | None:
    """Why ARCHIVE_URL cannot be used, or None. Only the scheme is checked here: whether the
    database answers is the archive's business when it starts."""
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ARCHIVE_SCHEMES:
        return (
            f"ARCHIVE_URL (or DATABASE_URL) {redact_url(url)[:100]!r} is not an archive "
            "database: use sqlite:///path/to/archive.db or postgresql://user:password@host/db"
        )
    if scheme.lower() == "sqlite" and not rest.strip("/"):
        return "ARCHIVE_URL: sqlite:// needs a file path (sqlite:///path/to/archive.db)"
    return None


def check_sns(settings: Settings) -> None:
    topics = settings.sns_topic_arns
    if ANY_TOPIC in topics and len(topics) > 1:
        raise ConfigError("SNS_TOPIC_ARNS is either `*` (any topic) or a list of topic ARNs")
    for arn in topics:
        if arn != ANY_TOPIC and not SNS_TOPIC_ARN.fullmatch(arn):
            raise ConfigError(
                f"SNS_TOPIC_ARNS: {arn[:100]!r} is not an SNS topic ARN "
                "(arn:aws:sns:<region>:<account>:<topic>); set your SES feedback topics"
            )
    versions = settings.sns_signature_versions
    if not versions or not set(versions) <= set(SIGNATURE_VERSIONS):
        raise ConfigError("SNS_SIGNATURE_VERSIONS must list 1 (SHA1), 2 (SHA256) or both")
    try:
        re.compile(settings.sns_cert_url_pattern)
    except re.error as exc:
        raise ConfigError(f"SNS_CERT_URL_PATTERN is not a regular expression: {exc}") from exc


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_role(settings: Settings, role: str) -> None:
    """What a role checks before it starts, beyond `check`: ingest and stats refuse to serve a
    non-loopback address without credentials, unless ALLOW_UNAUTHENTICATED says so."""
    if role not in AUTHENTICATED_ROLES or is_loopback(settings.bind_host):
        return
    if settings.api_key or settings.jwt_secret or settings.allow_unauthenticated:
        return
    raise ConfigError(
        f"{role} would serve BIND_HOST={settings.bind_host or '(all interfaces)'} without "
        "authentication: anyone who reaches it could send mail through your SES account, "
        "cancel topics and delete suppressions. Set API_KEY (or JWT_SECRET), bind a loopback "
        "address (BIND_HOST=127.0.0.1), or set ALLOW_UNAUTHENTICATED=1 if a proxy in front "
        "authenticates every request"
    )


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: str | None = ".env"
) -> Settings:
    """Read settings once, in `main()`: `.env` first, then the real environment on top."""
    merged: dict[str, str] = {}
    if dotenv:
        merged.update(read_dotenv(Path(dotenv)))
    merged.update(os.environ if environ is None else environ)
    return settings_from_mapping(merged)
