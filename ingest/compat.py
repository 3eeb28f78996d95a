"""One base URL for the older services' clients.

The Go and Rust services answered every endpoint on one port. sesflow splits them across roles,
so that a client of either can switch by changing only its base URL, the ingest API also answers
the compatibility routes (their stats and tracking paths) by forwarding them to the role that
owns them (STATS_URL, TRACKER_URL). New clients and SNS subscriptions should call the owning role
directly: this is a compatibility hop, not a gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from yarl import URL

from sesflow.common.http import error_response, read_body
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings

log = get_logger(__name__)

HTTP = web.AppKey("compat_http", aiohttp.ClientSession)
TARGETS = web.AppKey("compat_targets", dict)

# (method, path): the compatibility routes that another role owns.
TRACKER_PATHS = (
    ("POST", "/v1/events/results"),
    ("POST", "/v1/events/result"),
    ("GET", "/v1/events/open"),
    ("GET", "/v1/events/open/"),
    ("GET", "/v1/events/click"),
    ("GET", "/v1/events/unsubscribe"),
    ("POST", "/v1/events/unsubscribe"),
)
STATS_PATHS = (
    ("GET", "/v1/topics/{topic_id}"),
    ("GET", "/v1/results/count/{plan_id}"),
    ("GET", "/v1/results/sent"),
    ("GET", "/v1/events/counts/sent"),
)
# Tracking and the SNS webhook are public on the tracker, so they are public here too.
PUBLIC_PATHS = tuple(path for _, path in TRACKER_PATHS)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "content-length",
}


# The tracker's paths are public: a client's credentials for ingest have no business there.
CREDENTIALS = {"x-api-key", "authorization", "cookie"}


def target_urls(settings: Settings) -> dict[str, str]:
    local = "127.0.0.1" if settings.bind_host in {"0.0.0.0", "::"} else settings.bind_host
    return {
        "tracker": (settings.tracker_url or f"http://{local}:{settings.tracker_port}").rstrip("/"),
        "stats": (settings.stats_url or f"http://{local}:{settings.stats_port}").rstrip("/"),
    }


def forwarder(role: str, max_bytes: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def forward(request: web.Request) -> web.StreamResponse:
        url = request.app[TARGETS][role] + request.rel_url.raw_path_qs
        dropped = HOP_BY_HOP | CREDENTIALS if role == "tracker" else HOP_BY_HOP
        headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
        # The same size and time limits as a body ingest reads for itself.
        body = await read_body(request, max_bytes) if request.can_read_body else None
        try:
            async with request.app[HTTP].request(
                request.method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=upstream.status, body=payload, headers=out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("compat forward failed", role=role, url=url, error=str(exc))
            # The internal address stays in the log: tracking paths answer anyone.
            return error_response(502, "upstream_unavailable", f"the {role} role did not answer")

    return forward


async def http_context(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=15, connect=3), auto_decompress=False
    ) as session:
        app[HTTP] = session
        yield


def add_compat_routes(app: web.Application, settings: Settings) -> None:
    app[TARGETS] = target_urls(settings)
    app.cleanup_ctx.append(http_context)
    for role, paths in (("tracker", TRACKER_PATHS), ("stats", STATS_PATHS)):
        handler = forwarder(role, settings.max_request_bytes)
        for method, path in paths:
            app.router.add_route(method, path, handler)
