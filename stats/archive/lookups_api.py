"""The look-up routes on the stats API, served from the archive (never by scanning Redis):

    GET /v1/messages/{id}                                the message and its counts by state
    GET /v1/messages/{id}/recipients?state=&cursor=&limit=     its recipients, by index
    GET /v1/recipients/{email}/events?since=&cursor=&limit=    an address's timeline, newest first
    GET /v1/topics?cursor=&limit=                        topics, the most recently active first
    GET /v1/topics/{topic_id}/messages?cursor=&limit=    a topic's messages, newest first

A list answers `{"items": [...], "next_cursor": str | null}`: pass `next_cursor` back as `cursor`
until it is null. `limit` is 1..500, 50 by default. Times are epoch milliseconds.

Errors: a bad parameter or cursor 400, an unknown message, topic or address 404, the archive
off (ARCHIVE=off) or unreachable 503; always `{"error", "detail"}`. The routes sit under `/v1/`,
so the stats API's authentication covers them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from sesflow.common.addresses import is_valid_address
from sesflow.common.errors import ArchiveUnavailable, InputError
from sesflow.common.http import int_param, json_response
from sesflow.common.settings import Settings
from sesflow.stats.archive import lookups
from sesflow.stats.archive.cursor import decode_cursor
from sesflow.stats.archive.db import Database, connect_archive
from sesflow.stats.archive.lookups import Reader
from sesflow.stats.archive.vocabulary import STATE_RANK
from sesflow.stats.params import time_param

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_ID_CHARS = 200
# A recipient's states, as the archive records them.
STATES = frozenset(STATE_RANK)

Handler = Callable[[web.Request], Awaitable[web.Response]]


class ArchiveReader:
    """The archive the look-ups read, opened at the first look-up, and again at the next one
    after an open that failed: an archive that is down when stats starts (Postgres restarting)
    makes the look-ups answer 503 until it is back, while the counters keep being served."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db: Database | None = None
        self.opening = asyncio.Lock()

    async def get(self) -> Reader:
        if self.settings.archive == "off":
            raise InputError(
                "archive_off",
                "the history archive is off (ARCHIVE=off), and look-ups are served from it: "
                "unset ARCHIVE (or set it to on) and restart the stats role",
                status=503,
            )
        async with self.opening:
            if self.db is None:
                # Migrated too: the look-ups may start before the archive writer has.
                self.db = await connect_archive(self.settings)
        return self.db

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None


ARCHIVE_READER = web.AppKey("archive_reader", ArchiveReader)


def archive_errors(handler: Handler) -> Handler:
    """The archive failing (down, locked, refusing) is a 503 with its reason, never a 500."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ArchiveUnavailable as exc:
            raise InputError(
                "archive_unavailable", f"the history archive cannot be read: {exc}", status=503
            ) from None

    return wrapped


def limit_param(request: web.Request) -> int:
    return int_param(request.query.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)


def id_param(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID_CHARS:
        raise InputError("invalid_parameter", f"{name} must be 1..{MAX_ID_CHARS} characters")
    return value


def state_param(request: web.Request) -> str | None:
    state = request.query.get("state") or None
    if state is not None and state not in STATES:
        raise InputError("invalid_parameter", f"state must be one of {', '.join(sorted(STATES))}")
    return state


def email_param(request: web.Request) -> str:
    email = request.match_info["email"].strip()
    if not is_valid_address(email):
        raise InputError("invalid_address", f"{email[:254]!r} is not a valid address")
    return email


async def reader(request: web.Request) -> Reader:
    return await request.app[ARCHIVE_READER].get()


async def get_message(request: web.Request) -> web.Response:
    msg_id = id_param(request, "msg_id")
    found = await lookups.message(await reader(request), msg_id)
    if found is None:
        raise not_found(f"no message {msg_id!r} in the archive")
    return json_response(found)


async def get_message_recipients(request: web.Request) -> web.Response:
    msg_id = id_param(request, "msg_id")
    state, limit = state_param(request), limit_param(request)
    after = decode_cursor(request.query.get("cursor"), lookups.RECIPIENTS, (int,))
    db = await reader(request)
    page = await lookups.recipients(db, msg_id, state, after, limit)
    if not page.items and after is None and not await lookups.message_exists(db, msg_id):
        raise not_found(f"no message {msg_id!r} in the archive")
    return json_response({"message_id": msg_id, **page.view()})


async def get_recipient_events(request: web.Request) -> web.Response:
    email = email_param(request)
    raw_since = request.query.get("since")
    since = int(time_param(raw_since, "since", 0) * 1000) if raw_since else None
    limit = limit_param(request)
    after = decode_cursor(request.query.get("cursor"), lookups.EVENTS, (int, int, str))
    db = await reader(request)
    page = await lookups.recipient_events(db, email, since, after, limit)
    if not page.items and after is None and not await lookups.address_known(db, email):
        raise not_found(f"no events for {email} in the archive")
    return json_response({"email": email, **page.view()})


async def get_topics(request: web.Request) -> web.Response:
    limit = limit_param(request)
    after = decode_cursor(request.query.get("cursor"), lookups.TOPICS, (int, str))
    return json_response((await lookups.topics(await reader(request), after, limit)).view())


async def get_topic_messages(request: web.Request) -> web.Response:
    topic = id_param(request, "topic_id")
    limit = limit_param(request)
    after = decode_cursor(request.query.get("cursor"), lookups.TOPIC_MESSAGES, (int, str))
    db = await reader(request)
    page = await lookups.topic_messages(db, topic, after, limit)
    if not page.items and after is None and not await lookups.topic_exists(db, topic):
        raise not_found(f"no topic {topic!r} in the archive")
    return json_response({"topic_id": topic, **page.view()})


def not_found(detail: str) -> InputError:
    return InputError("not_found", detail, status=404)


def add_lookup_routes(app: web.Application, settings: Settings) -> None:
    """The look-up routes, reading the archive ARCHIVE_URL names (unless ARCHIVE=off)."""
    app[ARCHIVE_READER] = ArchiveReader(settings)
    app.cleanup_ctx.append(_close_reader)
    for path, handler in (
        ("/v1/messages/{msg_id}", get_message),
        ("/v1/messages/{msg_id}/recipients", get_message_recipients),
        ("/v1/recipients/{email}/events", get_recipient_events),
        ("/v1/topics", get_topics),
        ("/v1/topics/{topic_id}/messages", get_topic_messages),
    ):
        app.router.add_get(path, archive_errors(handler))


async def _close_reader(app: web.Application) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await app[ARCHIVE_READER].close()
