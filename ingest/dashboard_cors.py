"""Cross-origin access to the pause routes for the live dashboard, which stats serves on another
port: its pause and resume buttons call these routes from the browser.

Only the pause routes, only POST, and only from the dashboard's origin: STATS_URL's when set,
else this host (as the browser named it) at STATS_PORT. A preflight (OPTIONS) carries no
credentials, so it is answered before the API key is checked; the POST itself still needs the
key or token like any other call.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from sesflow.common.settings import Settings

PAUSE_PATH = re.compile(r"^/v1/(?:topics/[^/]+/)?(?:pause|resume)$")
ALLOW_HEADERS = "authorization, x-api-key, content-type"
MAX_AGE_S = "600"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def dashboard_cors(settings: Settings) -> Any:
    stats_origin = origin_of(settings.stats_url) if settings.stats_url else ""

    def allowed(request: web.Request, origin: str) -> bool:
        if stats_origin:
            return origin.lower() == stats_origin
        parts = urlsplit(origin)
        try:
            port = parts.port
        except ValueError:
            return False
        return parts.hostname == request.url.host and port == settings.stats_port

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        if not origin or not PAUSE_PATH.match(request.path) or not allowed(request, origin):
            return await handler(request)
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS":
            headers.update(
                {
                    "Access-Control-Allow-Methods": "POST",
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": MAX_AGE_S,
                }
            )
            return web.Response(status=204, headers=headers)
        response = await handler(request)
        response.headers.update(headers)
        return response

    return middleware
