"""Recipient-facing endpoints: the open pixel, click redirects and unsubscribes.

Every link carries a token signed with the tracking secret (`common.tracking`; a click carries
the recipient's token and the link's, or, in older mail, one token for both). A forged or
altered token is never counted: the pixel is still served (a broken image helps nobody), a click
gets 400 (never a redirect to a URL the token does not seal), an unsubscribe gets a 400 page.
An unsubscribe leaves only the mailing list its token seals (`unsubscribe_scope`); hard bounces
and complaints (`tracker.webhook`) still suppress an address everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from redis.exceptions import RedisError

from sesflow.common.connection import UNAVAILABLE, redis_errors
from sesflow.common.errors import InputError, RedisUnavailable
from sesflow.common.http import error_response, json_response, read_body
from sesflow.common.keys import split_request_id
from sesflow.common.logs import get_logger
from sesflow.common.mailing_lists import ALL_LISTS, is_list_name
from sesflow.common.schema import Event, EventType
from sesflow.common.tracking import Token, verify, verify_click
from sesflow.tracker import metrics, pages
from sesflow.tracker.context import TRACKER, Tracker
from sesflow.tracker.recorder import FirstTouch, Pending, first_click, first_open, first_unsubscribe

log = get_logger(__name__)

MAX_UNSUBSCRIBE_BODY = 64 * 1024


async def checked_token(tracker: Tracker, text: str, kind: str) -> Token | None:
    """The token when it is signed by us and of this kind (for "c", a click: either form of
    `common.tracking.verify_click`). Raises RedisUnavailable when the secret is kept in Redis
    and could not be read yet."""
    if not text:
        return None
    secret = await tracker.secret.get()
    if secret is None:
        raise RedisUnavailable("tracking secret not loaded yet")
    if kind == "c":
        return verify_click(secret, text)
    token = verify(secret, text)
    return token if token is not None and token.k == kind else None


@dataclass(frozen=True, slots=True)
class Touch:
    """What a recipient did through a link, as its event tells it (beside the request id)."""

    kind: EventType
    topic: str = ""
    email: str = ""
    url: str = ""
    detail: str = ""


async def record(
    tracker: Tracker, rid: str, rule: Callable[[int], FirstTouch], touch: Touch
) -> None:
    """Append one event for request `rid`; unique when it is the recipient's first of its kind."""
    parsed = split_request_id(rid)
    msg_id, index = parsed if parsed is not None else ("", -1)
    part = tracker.keys.for_message(msg_id) if msg_id else tracker.keys.partition(0)
    event = Event(
        type=touch.kind,
        ts=int(time.time() * 1000),
        topic=touch.topic,
        msg_id=msg_id,
        index=index,
        email=touch.email,
        url=touch.url,
        detail=touch.detail,
    )
    added = await tracker.recorder.record(
        part, msg_id, [Pending(event, rule(index) if msg_id else None)]
    )
    if added:
        metrics.count_events([touch.kind])


# --- open ---------------------------------------------------------------------------------------


async def open_target(tracker: Tracker, query: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(request id, topic, detail) of a countable open, else None."""
    token = await checked_token(tracker, query.get("t", ""), "o")
    if token is not None:
        return token.r, token.t, ""
    bare = query.get("requestId") or query.get("request_id") or ""
    if query.get("t") or not bare or not tracker.settings.allow_unsigned_opens:
        return None
    parsed = split_request_id(bare)
    if parsed is None:  # an older service's integer id: counted, but it names no sesflow message
        return bare, "", f"unsigned request id {bare[:64]}"
    if not await was_sent(tracker, *parsed):
        return None
    return bare, await tracker.correlator.topic_of(parsed[0]), "unsigned"


async def was_sent(tracker: Tracker, msg_id: str, index: int) -> bool:
    """Whether sesflow holds a delivery state for this recipient. An unsigned id is anyone's to
    make up, and counting one writes a first-open hash that lives 90 days: only a recipient
    sesflow really handled may create one."""
    part = tracker.keys.for_message(msg_id)
    with redis_errors():
        # a final byte (0 = none), else a claim or an older version's state in the hash
        byte = await tracker.client.getrange(part.finals(msg_id), index, index)
        if byte and byte not in ("\0", b"\0"):
            return True
        return bool(await tracker.client.hexists(part.state(msg_id), str(index)))


async def open_pixel(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    try:
        target = await open_target(tracker, request.query)
        if target is None:
            metrics.LINKS_REFUSED.labels("open").inc()
        else:
            rid, topic, detail = target
            opened = Touch(EventType.OPENED, topic=topic, detail=detail)
            await record(tracker, rid, first_open, opened)
    except (RedisUnavailable, *UNAVAILABLE, RedisError) as exc:
        # The image is served whatever happens (an outage, or a refused write such as OOM under
        # noeviction); this open is lost, and counted as such.
        metrics.RECORD_FAILURES.labels("open").inc()
        log.warning("open not recorded", error=str(exc))
    return pages.pixel()


# --- click --------------------------------------------------------------------------------------


def redirectable(url: str) -> bool:
    """Only absolute http(s) URLs with a host, and nothing that could split a header."""
    if not url or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in {"http", "https"} and bool(parts.hostname)
    except ValueError:
        return False


async def click(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    token = await checked_token(tracker, request.query.get("t", ""), "c")
    if token is None or not redirectable(token.u):
        metrics.LINKS_REFUSED.labels("click").inc()
        raise InputError("invalid_token", "this link is not valid")
    try:
        clicked = Touch(EventType.CLICKED, topic=token.t, url=token.u)
        await record(tracker, token.r, first_click, clicked)
    except (RedisUnavailable, *UNAVAILABLE, RedisError) as exc:
        # The recipient still gets where the link goes; only the count is lost.
        metrics.RECORD_FAILURES.labels("click").inc()
        log.warning("click not recorded", error=str(exc))
    return web.Response(status=302, headers={"Location": token.u, **pages.NO_CACHE})


# --- unsubscribe --------------------------------------------------------------------------------


def unsubscribe_scope(token: Token) -> str:
    """The list a one-click unsubscribe leaves: the one its token seals. A link in mail sent
    before lists existed names none; it leaves every list, as its stored unsubscribes were
    migrated to (`common.suppression.migrate_unsubscribes`): no more bulk mail of any list, as
    the recipient expects, and their receipts and password resets still arrive."""
    return token.l if token.l and is_list_name(token.l) else ALL_LISTS


def wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


async def unsubscribe(request: web.Request) -> web.StreamResponse:
    """GET: a confirmation page. POST (RFC 8058 one-click, or that page's button): suppress the
    address at once and record `unsubscribed` (once per recipient)."""
    tracker = request.app[TRACKER]
    text = request.query.get("t", "")
    token = await checked_token(tracker, text, "u")
    if token is None or "@" not in token.e:
        metrics.LINKS_REFUSED.labels("unsubscribe").inc()
        if request.method == "GET":
            return pages.invalid_link()
        return error_response(400, "invalid_token", "this unsubscribe link is not valid")
    if request.method == "GET":
        return pages.confirm_unsubscribe(text, token.e)

    # The body is `List-Unsubscribe=One-Click` (RFC 8058); the signed token alone decides.
    await read_body(request, MAX_UNSUBSCRIBE_BODY)
    scope = unsubscribe_scope(token)
    with redis_errors():
        await tracker.suppressions.unsubscribe(token.e, scope, topic=token.t)
    left = Touch(EventType.UNSUBSCRIBED, topic=token.t, email=token.e, detail=f"list {scope}")
    await record(tracker, token.r, first_unsubscribe, left)
    log.info("unsubscribed", rid=token.r, topic=token.t, list=scope)
    if wants_html(request):
        return pages.unsubscribed(token.e)
    return json_response({"status": "unsubscribed"})
