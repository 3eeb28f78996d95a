"""Prometheus metrics of a sender process, served on SENDER_METRICS_PORT with /health."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from common.http import json_response
from common.settings import Settings

JOBS = Counter(
    "sesflow_sender_jobs_total",
    "Recipient jobs finished by this process, by outcome",
    ["outcome"],  # sent failed stopped suppressed unknown duplicate dead_letter
)
SES_SECONDS = Histogram(
    "sesflow_sender_ses_seconds",
    "Duration of SES SendEmail calls",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SES_ERRORS = Counter("sesflow_sender_ses_errors_total", "SES errors by class", ["error"])
BUCKET_TOKENS = Gauge("sesflow_sender_bucket_tokens", "Tokens available in the shared bucket")
BUCKET_RATE = Gauge("sesflow_sender_bucket_rate", "Effective shared send rate (per second)")
BUCKET_FACTOR = Gauge("sesflow_sender_bucket_factor", "AIMD factor of the shared rate (1 = full)")
PAUSED_SECONDS = Gauge("sesflow_sender_paused_seconds", "Seconds left in a cluster-wide pause")
JOBS_HELD = Gauge("sesflow_sender_jobs_held", "Jobs this process is handling right now")

HealthInfo = Callable[[], dict[str, Any]]
HEALTH_KEY: web.AppKey[HealthInfo] = web.AppKey("health")


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", **request.app[HEALTH_KEY]()})


def create_app(settings: Settings, health_info: Callable[[], dict[str, Any]]) -> web.Application:
    """`/metrics` (Prometheus) and `/health` (with what `health_info` says about the sender)."""
    app = web.Application(client_max_size=settings.max_request_bytes)
    app[HEALTH_KEY] = health_info
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app
