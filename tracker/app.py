"""The tracker's aiohttp app: the SNS webhook and the recipients' open / click / unsubscribe
endpoints. All public (no auth): SNS and mail clients cannot authenticate; what protects these
endpoints is the SNS signature and the signed tracking tokens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from sesflow.common.connection import connect
from sesflow.common.http import add_health_routes, errors_middleware
from sesflow.common.keys import Keys
from sesflow.common.logs import get_logger
from sesflow.common.settings import ANY_TOPIC, Settings
from sesflow.common.suppression import SuppressionList
from sesflow.tracker import links, webhook
from sesflow.tracker.context import TRACKER, SecretSource, Tracker
from sesflow.tracker.correlation import Correlator
from sesflow.tracker.log_throttle import LogThrottle
from sesflow.tracker.metrics import role_metrics
from sesflow.tracker.recorder import EventRecorder
from sesflow.tracker.sns import CertCache, SnsVerifier
from sesflow.tracker.soft_bounces import SoftBounces

log = get_logger(__name__)


async def migrate_unsubscribes(suppressions: SuppressionList) -> None:
    """Global unsubscribes of an older version become every-list unsubscribes, once at start,
    in the background (`SuppressionList.migrate_unsubscribes`: idempotent; also `sesflow
    suppressions migrate`). A failure is logged; the next start or the command does it."""
    try:
        moved = await suppressions.migrate_unsubscribes()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning(
            "unsubscribe migration failed; run `sesflow suppressions migrate`", error=str(exc)
        )
        return
    if moved:
        log.info("older global unsubscribes moved to the every-list scope", moved=moved)


def create_app(settings: Settings) -> web.Application:
    metrics = role_metrics()
    app = web.Application(
        middlewares=[metrics.middleware, errors_middleware], client_max_size=webhook.MAX_BODY
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        client = connect(settings)
        http = aiohttp.ClientSession(headers={"User-Agent": "sesflow-tracker"})
        keys = Keys(settings.redis_prefix, settings.send_partitions)
        secret = SecretSource(settings, client)
        app[TRACKER] = Tracker(
            settings=settings,
            keys=keys,
            client=client,
            http=http,
            verifier=SnsVerifier(settings, CertCache(http)),
            correlator=Correlator(client, keys, settings.content_ttl),
            recorder=EventRecorder(client, settings.content_ttl),
            suppressions=SuppressionList(client, keys),
            secret=secret,
            refusal_logs=LogThrottle(),
            soft_bounces=SoftBounces(client, keys, settings),
        )
        await secret.get()  # once at startup; retried on demand if Redis is not up yet
        if ANY_TOPIC in settings.sns_topic_arns:
            log.warning(
                "SNS_TOPIC_ARNS=* : signed messages from any SNS topic in the world are accepted, "
                "so anyone can report bounces and complaints; set your topic ARNs instead"
            )
        elif not settings.sns_topic_arns:
            log.warning(webhook.NO_TOPICS)
        migrating = asyncio.create_task(migrate_unsubscribes(app[TRACKER].suppressions))
        try:
            yield
        finally:
            migrating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await migrating
            await http.close()
            await client.aclose()

    app.cleanup_ctx.append(resources)
    for path in ("/v1/events/results", "/v1/events/result"):
        app.router.add_post(path, webhook.sns_webhook)
    app.router.add_get("/v1/events/open", links.open_pixel)
    # The Go service's mail embeds `/v1/events/open/?requestId=N`: mail already in inboxes.
    app.router.add_get("/v1/events/open/", links.open_pixel)
    app.router.add_get("/v1/events/click", links.click)
    app.router.add_get("/v1/events/unsubscribe", links.unsubscribe)
    app.router.add_post("/v1/events/unsubscribe", links.unsubscribe)
    add_health_routes(app, lambda app: app[TRACKER].client)
    app.router.add_get("/metrics", metrics.handler)
    return app
