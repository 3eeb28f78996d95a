"""The few bodies the tracker answers recipients with: the pixel and the unsubscribe pages."""

from __future__ import annotations

import base64
from html import escape
from urllib.parse import quote

from aiohttp import web

# The classic 42-byte transparent 1x1 GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}

_PAGE_HEADERS = {
    **NO_CACHE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}"
)


def pixel() -> web.Response:
    return web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)


def page(title: str, body_html: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body_html}</body></html>"
    )
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
    )


def confirm_unsubscribe(token: str, email: str) -> web.Response:
    """GET never unsubscribes (link scanners follow links): a button POSTs, as RFC 8058 does."""
    return page(
        "Unsubscribe",
        f"<p>Stop sending email to <strong>{escape(email)}</strong>?</p>"
        f'<form method=post action="?t={escape(quote(token, safe=""))}">'
        '<input type=hidden name="List-Unsubscribe" value="One-Click">'
        "<button type=submit>Unsubscribe</button></form>",
    )


def unsubscribed(email: str) -> web.Response:
    return page(
        "You are unsubscribed",
        f"<p><strong>{escape(email)}</strong> will not receive these emails any more.</p>",
    )


def invalid_link() -> web.Response:
    return page(
        "Invalid link",
        "<p>This unsubscribe link is not valid. Please use the link from the email itself.</p>",
        status=400,
    )
