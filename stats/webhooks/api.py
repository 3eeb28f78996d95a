"""The webhook registry routes on the stats app, authenticated like every `/v1/` route:

    POST   /v1/webhooks              {"url", "events": [...] | ["*"], "topic"?, "description"?}
                                     -> 201, the endpoint with its `secret` (shown only here)
    GET    /v1/webhooks              {"webhooks": [...]} (no secrets)
    GET    /v1/webhooks/{id}         the endpoint (no secret)
    DELETE /v1/webhooks/{id}         {"id", "deleted": true}; its waiting deliveries are dropped
    POST   /v1/webhooks/{id}/rotate  a new `secret`; the previous one still signs for
                                     WEBHOOK_ROTATION_GRACE
    POST   /v1/webhooks/{id}/enable  enable a disabled endpoint again

Bad input is a 4xx JSON error: unknown fields, an event name outside the vocabulary, a URL that
is not https (http only with WEBHOOK_ALLOW_PRIVATE) or whose host is private (`ssrf`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web

from sesflow.common.errors import InputError
from sesflow.common.http import decode_json, json_response, read_body
from sesflow.common.keys import Keys
from sesflow.common.metrics import RoleMetrics
from sesflow.common.settings import Settings
from sesflow.stats.webhooks import metrics
from sesflow.stats.webhooks.endpoints import Endpoint, Registry
from sesflow.stats.webhooks.ssrf import RefusedTarget, check_resolves, check_url
from sesflow.stats.webhooks.vocabulary import ALL, NAMES, iso_time, subscription_name

MAX_BODY = 16 * 1024
MAX_URL = 2048
MAX_TOPIC = 256
MAX_ENDPOINTS = 100

WEBHOOK_SETTINGS = web.AppKey("webhook_settings", Settings)
REGISTRY = web.AppKey("webhook_registry", Registry)


class NewEndpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str
    events: list[str]
    topic: str | None = None
    description: str = ""


_new_endpoint = msgspec.json.Decoder(NewEndpoint)


def add_webhook_routes(
    app: web.Application,
    settings: Settings,
    client_of: Callable[[web.Application], Any],
    role_metrics: RoleMetrics,
) -> None:
    """The routes, and a registry (and the metrics) once the app has its Redis client."""
    app[WEBHOOK_SETTINGS] = settings
    keys = Keys(settings.redis_prefix, settings.send_partitions)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[REGISTRY] = Registry(client_of(app), keys)
        metrics.register(role_metrics, client_of(app), keys)
        yield

    app.cleanup_ctx.append(ctx)
    app.router.add_post("/v1/webhooks", create)
    app.router.add_get("/v1/webhooks", list_all)
    app.router.add_get("/v1/webhooks/{id}", show)
    app.router.add_delete("/v1/webhooks/{id}", delete)
    app.router.add_post("/v1/webhooks/{id}/rotate", rotate)
    app.router.add_post("/v1/webhooks/{id}/enable", enable)


def now_ms() -> int:
    return int(time.time() * 1000)


def subscriptions(events: list[str]) -> tuple[str, ...]:
    if not events:
        raise InputError("invalid_events", 'give the event names, or ["*"] for every event')
    names = []
    for name in events:
        normal = subscription_name(name)
        if normal is None:
            raise InputError(
                "invalid_events",
                f"unknown event {name[:100]!r}; one of {sorted(NAMES)} (or email.<name>), or *",
            )
        if normal not in names:
            names.append(normal)
    if ALL in names and len(names) > 1:
        raise InputError("invalid_events", '"*" already means every event: give it alone')
    return tuple(names)


async def checked_url(url: str, settings: Settings) -> str:
    url = url.strip()
    if not url or len(url) > MAX_URL:
        raise InputError("invalid_url", f"url must be 1 to {MAX_URL} characters")
    try:
        host = check_url(url, settings.webhook_allow_private)
        await check_resolves(host, settings.webhook_allow_private)
    except RefusedTarget as exc:
        raise InputError("invalid_url", str(exc), status=422) from None
    return url


async def create(request: web.Request) -> web.Response:
    body = await read_body(request, MAX_BODY)
    new = decode_json(body, _new_endpoint.decode)
    settings = request.app[WEBHOOK_SETTINGS]
    events = subscriptions(new.events)
    topic = (new.topic or "").strip()
    if len(topic) > MAX_TOPIC or len(new.description) > 1000:
        raise InputError("invalid_parameter", f"topic up to {MAX_TOPIC}, description up to 1000")
    url = await checked_url(new.url, settings)
    registry = request.app[REGISTRY]
    if len(await registry.all()) >= MAX_ENDPOINTS:
        raise InputError("too_many_webhooks", f"at most {MAX_ENDPOINTS} endpoints", status=409)
    endpoint = await registry.create(url, events, topic, new.description, now_ms())
    return json_response({**endpoint.view(), "secret": endpoint.secrets[0].value}, status=201)


async def found(request: web.Request) -> Endpoint:
    endpoint_id = request.match_info["id"]
    endpoint = await request.app[REGISTRY].get(endpoint_id)
    if endpoint is None:
        raise InputError("not_found", f"no webhook endpoint {endpoint_id[:100]!r}", status=404)
    return endpoint


async def list_all(request: web.Request) -> web.Response:
    endpoints = sorted((await request.app[REGISTRY].all()).values(), key=lambda e: e.created_ms)
    return json_response({"webhooks": [e.view() for e in endpoints]})


async def show(request: web.Request) -> web.Response:
    return json_response((await found(request)).view())


async def delete(request: web.Request) -> web.Response:
    endpoint = await found(request)
    await request.app[REGISTRY].delete(endpoint.id)
    return json_response({"id": endpoint.id, "deleted": True})


async def rotate(request: web.Request) -> web.Response:
    endpoint = await found(request)
    grace = request.app[WEBHOOK_SETTINGS].webhook_rotation_grace
    rotated = await request.app[REGISTRY].rotate(endpoint.id, now_ms(), grace)
    if rotated is None:
        raise InputError("not_found", f"no webhook endpoint {endpoint.id!r}", status=404)
    previous = [s.expires_ms for s in rotated.secrets if s.expires_ms]
    return json_response(
        {
            **rotated.view(),
            "secret": rotated.secrets[0].value,
            "previous_secret_expires_at": iso_time(previous[0]) if previous else None,
        }
    )


async def enable(request: web.Request) -> web.Response:
    endpoint = await found(request)
    enabled = await request.app[REGISTRY].set_disabled(endpoint.id, now_ms(), "")
    if enabled is None:
        raise InputError("not_found", f"no webhook endpoint {endpoint.id!r}", status=404)
    return json_response(enabled.view())
