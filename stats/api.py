"""The stats HTTP API on STATS_PORT: the older Go and Rust services' statistics endpoints, a time
series for Grafana, the dashboard's overview and charts, /metrics and the live dashboard page.

Public (no API_KEY / JWT needed): `/` (the dashboard page: it holds no data, it asks the API with
the key the user enters), `/health` and `/metrics` (Prometheus scrapes without credentials).
Everything under `/v1/` requires them when API_KEY or JWT_SECRET is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from aiohttp import web

from sesflow.common.aws import fetch_quota
from sesflow.common.connection import Redis, connect
from sesflow.common.errors import InputError
from sesflow.common.http import (
    HEALTH_PATHS,
    add_health_routes,
    auth_middleware,
    errors_middleware,
    int_param,
    json_response,
)
from sesflow.common.keys import Keys
from sesflow.common.metrics import RoleMetrics
from sesflow.common.pauses import NOT_PAUSED, Pauses
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import AggregatorMetrics
from sesflow.stats.archive.lookups_api import add_lookup_routes
from sesflow.stats.archive.metrics import add_archive_metrics
from sesflow.stats.archive.writer import ArchiveMetrics
from sesflow.stats.charts import MAX_HOURS, MAX_MINUTES, charts
from sesflow.stats.counters import METRICS
from sesflow.stats.metrics import PipelineCollector, role_metrics
from sesflow.stats.overview import MAX_TOPICS, overview
from sesflow.stats.params import hours_param, step_param, time_param
from sesflow.stats.queries import count_since, plan_series, read_counts, series, summary
from sesflow.stats.quota import QuotaCache, QuotaFetcher
from sesflow.stats.webhooks.api import add_webhook_routes

PUBLIC_PATHS = ("/", *HEALTH_PATHS, "/metrics")

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", Keys)
CLIENT: web.AppKey[Any] = web.AppKey("client")
PAUSES = web.AppKey("pauses", Pauses)
QUOTA = web.AppKey("quota", QuotaCache)
COLLECTOR = web.AppKey("collector", PipelineCollector)
ROLE_METRICS = web.AppKey("role_metrics", RoleMetrics)
DASHBOARD = web.AppKey("dashboard", bytes)


def create_app(
    settings: Settings,
    *,
    client: Redis | None = None,
    quota_fetcher: QuotaFetcher = fetch_quota,
    aggregator_metrics: AggregatorMetrics | None = None,
    archive_metrics: ArchiveMetrics | None = None,
) -> web.Application:
    """`client`: an existing Redis client (the app then does not close it)."""
    metrics = role_metrics()
    app = web.Application(
        middlewares=[
            metrics.middleware,
            errors_middleware,
            auth_middleware(settings, public=PUBLIC_PATHS),
        ]
    )
    app[ROLE_METRICS] = metrics
    app[SETTINGS] = settings
    app[KEYS] = Keys(settings.redis_prefix, settings.send_partitions)
    app[QUOTA] = QuotaCache(settings, quota_fetcher)
    app[DASHBOARD] = (
        resources.files("sesflow.stats").joinpath("static", "dashboard.html").read_bytes()
    )
    app.cleanup_ctx.append(_redis_ctx(client, aggregator_metrics))
    app.cleanup_ctx.append(_quota_ctx)
    add_archive_metrics(app, metrics, app[KEYS], archive_metrics, lambda app: app[CLIENT])
    app.router.add_get("/", dashboard)
    add_health_routes(app, lambda app: app[CLIENT])
    app.router.add_get("/metrics", metrics.handler)
    app.router.add_get("/v1/topics/{topic_id}", topic)
    app.router.add_get("/v1/results/count/{plan_id}", results_count)
    app.router.add_get("/v1/results/sent", results_sent)
    app.router.add_get("/v1/events/counts/sent", counts_sent)
    app.router.add_get("/v1/stats/timeseries", timeseries)
    app.router.add_get("/v1/stats/overview", stats_overview)
    app.router.add_get("/v1/stats/charts", stats_charts)
    add_webhook_routes(app, settings, lambda app: app[CLIENT], metrics)
    add_lookup_routes(app, settings)
    return app


def _redis_ctx(client: Redis | None, aggregator_metrics: AggregatorMetrics | None) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        own = client is None
        app[CLIENT] = connect(app[SETTINGS]) if own else client
        app[PAUSES] = Pauses(app[CLIENT], app[KEYS])
        app[COLLECTOR] = PipelineCollector(app[CLIENT], app[KEYS], aggregator_metrics)
        app[ROLE_METRICS].register(app[COLLECTOR], app[COLLECTOR].refresh)
        try:
            yield
        finally:
            if own:
                await app[CLIENT].aclose()

    return ctx


async def _quota_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[QUOTA].run(), name="ses-quota")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- handlers ---------------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[DASHBOARD],
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def topic_view(topic_id: str, counts: Counter[str]) -> dict[str, Any]:
    """Every counter, plus the names the Go and Rust services' clients read."""
    view: dict[str, Any] = {"topic_id": topic_id, **summary(counts)}
    view.update(
        success=view["sent"],
        failure=view["failed"],
        open_count=view["opened"],
        pending=view["created"],
        # The Rust service's shape: request states and (unique) feedback results.
        request_counts={
            "Created": view["created"],
            "Sent": view["sent"],
            "Failed": view["failed"],
            "Stopped": view["stopped"],
        },
        result_counts={
            "Delivery": view["delivered"],
            "Bounce": view["bounced"],
            "Complaint": view["complained"],
            "Open": view["opened_unique"],
        },
    )
    return view


async def topic(request: web.Request) -> web.Response:
    topic_id = request.match_info["topic_id"]
    keys = request.app[KEYS]
    counts = await read_counts(request.app[CLIENT], keys, lambda p: p.stats_topic(topic_id))
    if counts is None:
        raise InputError("not_found", f"no statistics for topic {topic_id!r}", status=404)
    # The topic's own pause (manual or the reputation guard's); all bulk: /v1/stats/overview.
    pause = await request.app[PAUSES].get(topic_id)
    paused = pause.view() if pause is not None else NOT_PAUSED
    return json_response({**topic_view(topic_id, counts), **paused})


async def results_count(request: web.Request) -> web.Response:
    """The Go service's shape exactly; an unknown plan answers zeros, as its SQL count did."""
    plan_id = request.match_info["plan_id"]
    keys = request.app[KEYS]
    counts = await read_counts(request.app[CLIENT], keys, lambda p: p.stats_topic(plan_id))
    view = summary(counts or Counter())
    return json_response(
        {name: view[name] for name in ("total", "created", "sent", "failed", "stopped")}
    )


async def results_sent(request: web.Request) -> web.Response:
    hours = hours_param(request.query.get("hours"))
    count = await count_since(
        request.app[CLIENT], request.app[KEYS], "sent", hours * 3600, time.time()
    )
    return json_response({"count": count})


async def counts_sent(request: web.Request) -> web.Response:
    """Sent by sesflow in the last `hours` (default 24), plus SES's quota from the cache."""
    hours = hours_param(request.query.get("hours"))
    count = await count_since(
        request.app[CLIENT], request.app[KEYS], "sent", hours * 3600, time.time()
    )
    return json_response({"count": count, "hours": hours, **request.app[QUOTA].view()})


async def timeseries(request: web.Request) -> web.Response:
    q = request.query
    metric = q.get("metric", "sent")
    if metric not in METRICS:
        raise InputError(
            "invalid_parameter", f"unknown metric {metric!r}; one of {sorted(METRICS)}"
        )
    topic_id = q.get("topic", "") or q.get("topic_id", "")
    now = time.time()
    end = time_param(q.get("to"), "to", now)
    start = time_param(q.get("from"), "from", end - 3600)
    try:
        plan = plan_series(metric, topic_id, start, end, step_param(q.get("step")), now)
    except ValueError as exc:
        raise InputError("invalid_parameter", str(exc)) from None
    points = await series(request.app[CLIENT], request.app[KEYS], plan, now)
    return json_response(
        {
            "target": f"{topic_id}:{metric}" if topic_id else metric,
            "metric": metric,
            "topic": topic_id or None,
            "from": plan.start,
            "to": plan.end,
            "step": plan.step,
            "buckets": "hour" if plan.hourly else "minute",
            "points": [{"time": t * 1000, "value": v} for t, v in points],
            "datapoints": [[v, t * 1000] for t, v in points],
        }
    )


async def stats_overview(request: web.Request) -> web.Response:
    limit = int_param(request.query.get("limit"), "limit", 50, 1, MAX_TOPICS)
    app = request.app
    data = await overview(
        app[CLIENT], app[KEYS], app[SETTINGS], app[QUOTA].view(), time.time(), limit
    )
    data["ingest_url"] = ingest_url(request)
    return json_response(data)


def ingest_url(request: web.Request) -> str:
    """Where the page's pause buttons call ingest: INGEST_URL, else the host the page was loaded
    from at INGEST_PORT (ingest lets that origin in: `ingest.dashboard_cors`)."""
    settings = request.app[SETTINGS]
    if settings.ingest_url:
        return settings.ingest_url.rstrip("/")
    host = request.url.host or "127.0.0.1"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{request.scheme}://{host}:{settings.ingest_port}"


async def stats_charts(request: web.Request) -> web.Response:
    """The dashboard's charts: `minutes` of sends per second, `hours` of feedback per minute."""
    q = request.query
    minutes = int_param(q.get("minutes"), "minutes", MAX_MINUTES, 1, MAX_MINUTES)
    hours = int_param(q.get("hours"), "hours", 3, 1, MAX_HOURS)
    app = request.app
    data = await charts(app[CLIENT], app[KEYS], app[SETTINGS], time.time(), minutes, hours)
    return json_response(data)
