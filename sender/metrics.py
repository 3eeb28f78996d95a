"""Prometheus metrics of a sender process (the pattern is `common.metrics`'s), served on
SENDER_METRICS_PORT with /health (Redis reachability and what the sender says about itself) and
/livez.

The metrics are module-level: one sender per process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from sesflow.common.connection import Redis
from sesflow.common.http import add_health_routes
from sesflow.common.metrics import RoleMetrics
from sesflow.common.settings import Settings

# Names and labels are the ones deploy/ (Grafana, the HPA) is built on. registry=None: not in
# prometheus-client's default registry; `role_metrics()` serves them.
JOBS = Counter(
    "sesflow_sends",
    "Recipient jobs by outcome: final (sent failed unknown stopped suppressed), or a send to be "
    "retried (throttled retried) or released because its SES setup is broken (setup_paused), "
    "or set aside until its paused setup resumes (parked), or a job already final (duplicate) "
    "or dead-lettered, or a rate slot dropped because the job got to it too late (late_slot)",
    ["outcome"],
    registry=None,
)
SES_SECONDS = Histogram(
    "sesflow_ses_call_seconds",
    "Duration of SES SendEmail calls",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=None,
)
SES_ERRORS = Counter("sesflow_ses_errors", "SES errors by class", ["error_class"], registry=None)
BUCKET_TOKENS = Gauge("sesflow_rate_tokens", "Tokens available in the shared bucket", registry=None)
BUCKET_RATE = Gauge(
    "sesflow_rate_effective_per_second",
    "Shared send rate in force (EMAIL_RATE after AIMD and SES's MaxSendRate)",
    registry=None,
)
RATE_CONFIGURED = Gauge(
    "sesflow_rate_configured_per_second", "EMAIL_RATE of this sender", registry=None
)
BUCKET_FACTOR = Gauge(
    "sesflow_rate_factor", "AIMD factor of the shared rate (1 = full)", registry=None
)
PAUSED_SECONDS = Gauge(
    "sesflow_rate_paused_seconds", "Seconds left in a cluster-wide pause", registry=None
)
SETUP_FAULTS = Counter(
    "sesflow_setup_faults",
    "SES answers that blame the setup, not the recipient (reason: configuration_set, "
    "configuration_set_paused, tenant_paused, mail_from_domain, identity, endpoint); sending "
    "with that setup pauses",
    ["reason"],
    registry=None,
)
SETUP_PAUSED = Gauge(
    "sesflow_setup_paused", "Setups paused by a setup fault, cluster-wide (0 = none)", registry=None
)
SETUP_PARKED = Gauge(
    "sesflow_setup_parked",
    "Jobs parked while their SES setup (scope) is paused, cluster-wide",
    ["scope"],
    registry=None,
)
# Bounded by SES_CONFIGURATION_SETS and SES_TENANTS: only allowed names reach a sender.
SETUP_SENDS = Counter(
    "sesflow_setup_sends",
    "Recipient jobs recorded by this sender, by outcome (sent failed unknown), SES "
    'configuration set and tenant ("" = none)',
    ["outcome", "configuration_set", "tenant"],
    registry=None,
)
SETUP_OUTCOMES = frozenset({"sent", "failed", "unknown"})


def count_setup(email: Any, event: str) -> None:
    """One recorded job of a composed email (`sender.compose.Email`; None: never composed), by
    its configuration set and tenant."""
    if email is not None:
        count_setup_many(event, email.configuration_set, email.tenant, 1)


def count_setup_many(event: str, configuration_set: str, tenant: str, n: int) -> None:
    """`n` recorded jobs of one setup (a bulk call's: one label lookup, not one per job)."""
    if event in SETUP_OUTCOMES:
        SETUP_SENDS.labels(event, configuration_set, tenant).inc(n)


JOBS_HELD = Gauge(
    "sesflow_sender_jobs_held", "Jobs this process is handling right now", registry=None
)


def role_metrics() -> RoleMetrics:
    return RoleMetrics(
        "sender",
        collectors=(
            JOBS,
            SES_SECONDS,
            SES_ERRORS,
            BUCKET_TOKENS,
            BUCKET_RATE,
            RATE_CONFIGURED,
            BUCKET_FACTOR,
            PAUSED_SECONDS,
            SETUP_FAULTS,
            SETUP_PAUSED,
            SETUP_PARKED,
            SETUP_SENDS,
            JOBS_HELD,
        ),
    )


HealthInfo = Callable[[], dict[str, Any]]
REDIS: web.AppKey[Any] = web.AppKey("redis")


def create_app(settings: Settings, health_info: HealthInfo, *, client: Redis) -> web.Application:
    """`/metrics` (Prometheus), `/health` (PING of `client`, the sender's Redis, with what
    `health_info` says about the sender) and `/livez`."""
    metrics = role_metrics()
    app = web.Application(
        middlewares=[metrics.middleware], client_max_size=settings.max_request_bytes
    )
    app[REDIS] = client
    RATE_CONFIGURED.set(settings.email_rate)
    app.router.add_get("/metrics", metrics.handler)
    add_health_routes(app, lambda app: app[REDIS], health_info)
    return app
