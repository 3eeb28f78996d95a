"""The dispatcher: consumer group `dispatch` on `requests`, one job per recipient.

For each entry it applies the stored template the message names (its current version: for an
entry XADDed by a producer, this is when it is accepted), validates the message with the API's
own code (`ingest.validation`, lenient mode: invalid addresses are dropped and counted
`rejected`; anything else invalid, such as a placeholder some recipient cannot fill, dead-letters
the whole entry), drops suppressed recipients, and runs
`dispatch.lua` per chunk of at most `CHUNK` recipients, which stores the content once and queues
the jobs on `sends` (or on the schedule), idempotently. Only then is the entry acknowledged, so a
crash at any point means redelivery, and redelivery changes nothing that was already done.

An entry that cannot be sent at all (undecodable, wrong types, no valid address, ...) goes to
`requests:dead` with the reason, is counted as `rejected`, and is acknowledged: no entry ever
stops the loop. Upkeep tasks reclaim entries of dead consumers (XAUTOCLAIM) and trim `requests`
below the oldest entry any group still needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from sesflow.common import scripts
from sesflow.common.connection import (
    UNAVAILABLE,
    connect,
    ensure_group,
    transient_reply,
    wait_for_redis,
)
from sesflow.common.errors import InputError, RedisUnavailable
from sesflow.common.keys import DISPATCH_GROUP, Keys, accepted_ms
from sesflow.common.logs import get_logger
from sesflow.common.schema import (
    EVENT_FIELD,
    REQUEST_FIELD,
    Event,
    EventType,
    MessageContent,
    MessageRequest,
    decode_request,
    encode,
)
from sesflow.common.settings import Settings
from sesflow.common.streams import trim_acknowledged
from sesflow.common.suppression import SuppressionList
from sesflow.ingest import metrics
from sesflow.ingest.templates import TemplateStore
from sesflow.ingest.validation import Limits, ValidMessage, listed, validate_message

log = get_logger(__name__)

CHUNK = 1000  # recipients per dispatch.lua call: keeps each call to a few milliseconds
SCHEDULE_CHUNK = 500  # recipients per schedule member
CONCURRENCY = 8  # entries handled at once
READ_BLOCK_MS = 1000
RECLAIM_IDLE_MS = 30_000  # far above the time one entry takes (a few ms per chunk)
RECLAIM_INTERVAL_S = 10.0
TRIM_INTERVAL_S = 30.0
RESTART_PAUSE = 1.0
DEAD_MAXLEN = 100_000  # dead letters kept for inspection (approximate cap)


def content_of(msg_id: str, valid: ValidMessage) -> MessageContent:
    """What dispatch.lua stores once per message (`total` is counted by the script)."""
    request = valid.request
    return MessageContent(
        msg_id=msg_id,
        topic=request.topic_id,
        subject=request.subject,
        html=request.content,
        from_email=request.from_email or "",
        track_opens=request.track_opens,
        track_clicks=request.track_clicks,
        unsubscribe=request.unsubscribe,
        total=0,
        accepted_ms=accepted_ms(msg_id),
        text=request.text or "",
        data=valid.data,
        reply_to=tuple(request.reply_to),
        headers=valid.headers,
        attachments=valid.attachments,
        lane=request.lane,
        weight=request.weight,
    )


def dispatcher_client(settings: Settings) -> Any:
    """A client whose replies survive arbitrary bytes: a producer may XADD anything, and a
    strict decode would fail the whole XREADGROUP batch. surrogateescape keeps the original bytes,
    so a dead-lettered entry is written back exactly as it came."""
    return connect(settings, encoding_errors="surrogateescape")


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Dispatcher:
    def __init__(
        self, client: Any, settings: Settings, keys: Keys, consumer: str | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.keys = keys
        self.consumer = consumer or consumer_name()
        self.limits = Limits.from_settings(settings)
        self.suppressions = SuppressionList(client, keys)
        self.script = scripts.register(client, "dispatch")
        self.reject_once = scripts.register(client, "reject_once")
        self.templates = TemplateStore(client, keys)
        self.inflight: set[asyncio.Task[None]] = set()
        self.reclaim_cursor = "0-0"

    # --- one entry ------------------------------------------------------------------------------

    async def validate(self, entry_id: str, fields: dict[str, str]) -> ValidMessage:
        """The entry's message, validated; InputError says why it cannot be sent."""
        raw = fields.get(REQUEST_FIELD)
        if raw is None:
            raise InputError("missing_field", f"no '{REQUEST_FIELD}' field in the entry")
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError("invalid_encoding", "the message is not UTF-8") from exc
        try:
            message = decode_request(data)
        except msgspec.ValidationError as exc:
            raise InputError("invalid_type", str(exc)) from exc
        except msgspec.DecodeError as exc:
            raise InputError("invalid_json", str(exc)) from exc
        if message.template is not None:
            message = await self.with_template(entry_id, message)
        return validate_message(message, self.limits, strict=False)

    async def with_template(self, msg_id: str, message: MessageRequest) -> MessageRequest:
        """The template's content copied into the message. When a previous attempt already
        stored the content (a redelivery after a crash), that copy is used: the template may
        have changed or gone since, and every chunk must send the same mail."""
        p = self.keys.for_message(msg_id)
        subject, html, text, data, dispatched = await self.client.hmget(
            p.message(msg_id), "subject", "html", "text", "data", "dispatched"
        )
        if dispatched is None or subject is None or html is None:
            return await self.templates.resolve(message)
        defaults = msgspec.json.decode(data) if data else None
        return msgspec.structs.replace(
            message, template=None, subject=subject, content=html, text=text, data=defaults
        )

    async def handle(self, entry_id: str, fields: dict[str, str]) -> None:
        """Dispatch or dead-letter one entry, then XACK. Redis errors propagate (the entry stays
        pending and is reclaimed); any other failure dead-letters it."""
        try:
            valid = await self.validate(entry_id, fields)
        except InputError as exc:
            await self.dead_letter(entry_id, fields, exc.error, exc.detail)
            return
        except (*UNAVAILABLE, RedisUnavailable, asyncio.CancelledError):
            raise  # reading a template: left pending, retried
        except ResponseError as exc:
            if transient_reply(exc):
                raise RedisUnavailable(str(exc)) from exc
            log.exception("validation failed", msg_id=entry_id)
            await self.dead_letter(entry_id, fields, "internal", f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # a validation bug must not leave a poison entry pending
            log.exception("validation failed", msg_id=entry_id)
            await self.dead_letter(entry_id, fields, "internal", f"{type(exc).__name__}: {exc}")
            return
        try:
            await self.dispatch(entry_id, valid)
        except (*UNAVAILABLE, RedisUnavailable, asyncio.CancelledError):
            raise
        except ResponseError as exc:
            if transient_reply(exc):  # OOM under noeviction, a failover...: retried later
                raise RedisUnavailable(str(exc)) from exc
            log.exception("dispatch failed", msg_id=entry_id)
            await self.dead_letter(entry_id, fields, "internal", f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            log.exception("dispatch failed", msg_id=entry_id)
            await self.dead_letter(entry_id, fields, "internal", f"{type(exc).__name__}: {exc}")
            return
        await self.client.xack(self.keys.requests, DISPATCH_GROUP, entry_id)
        metrics.DISPATCHER_ENTRIES.labels("dispatched").inc()

    async def dispatch(self, msg_id: str, valid: ValidMessage) -> None:
        """Run dispatch.lua chunk by chunk from where a previous attempt stopped."""
        request = valid.request
        p = self.keys.for_message(msg_id)
        script_keys = p.dispatch_keys(msg_id, request.topic_id)
        emails, own_data = valid.emails, valid.own_data
        rejected_detail = f"invalid addresses: {listed(valid.invalid)}" if valid.invalid else ""
        content = [part for pair in content_of(msg_id, valid).to_hash().items() for part in pair]
        head = [
            msg_id,
            0,
            valid.due_ms or 0,
            self.settings.content_ttl * 1000,
            request.topic_id,
            len(emails),
            len(valid.invalid),
            rejected_detail,
            SCHEDULE_CHUNK,
        ]
        first = int(await self.client.hget(p.message(msg_id), "dispatched") or 0)
        while first < len(emails):
            chunk = emails[first : first + CHUNK]
            suppressed = await self.suppressions.suppressed_among(chunk)
            recipients: list[str] = []
            for email, data in zip(chunk, own_data[first : first + CHUNK], strict=True):
                recipients += ["", ""] if email in suppressed else [email, data]
            head[1] = first
            body = content if first == 0 else []
            marker, outcome = await self.script(
                keys=script_keys, args=[*head, len(body) // 2, *body, *recipients]
            )
            log.debug("dispatched chunk", msg_id=msg_id, first=first, outcome=outcome)
            first = int(marker)

    async def dead_letter(
        self, entry_id: str, fields: dict[str, str], reason: str, detail: str
    ) -> None:
        """Record why, count it `rejected` (n = the addresses it listed, or 1 when it cannot be
        read), and XACK with the dead letter in one transaction."""
        topic, recipients = "", 1
        try:
            message = decode_request(fields.get(REQUEST_FIELD, "").encode("utf-8"))
            topic, recipients = message.topic_id[:200], message.recipient_count or 1
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError):
            pass
        log.warning("request dead-lettered", msg_id=entry_id, reason=reason, detail=detail[:300])
        event = Event(
            type=EventType.REJECTED,
            ts=int(time.time() * 1000),
            topic=topic,
            msg_id=entry_id,
            n=recipients,
            detail=f"{reason}: {detail}"[:1000],
        )
        p = self.keys.for_message(entry_id)
        await self.reject_once(
            keys=[p.message(entry_id), p.events],
            args=[EVENT_FIELD, encode(event), self.settings.content_ttl * 1000],
        )
        dead = {**fields, "reason": reason, "detail": detail, "id": entry_id}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.requests_dead, dead, maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xack(self.keys.requests, DISPATCH_GROUP, entry_id)
            await pipe.execute()
        metrics.DISPATCHER_ENTRIES.labels("dead_lettered").inc()

    # --- the loop -------------------------------------------------------------------------------

    def spawn(self, entry_id: str, fields: dict[str, str] | None) -> None:
        task = asyncio.create_task(self.guarded(entry_id, fields))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def guarded(self, entry_id: str, fields: dict[str, str] | None) -> None:
        try:
            if fields is None:  # deleted while pending: nothing left to do
                await self.client.xack(self.keys.requests, DISPATCH_GROUP, entry_id)
            else:
                await self.handle(entry_id, fields)
        except (*UNAVAILABLE, RedisUnavailable) as exc:
            # Left pending: XAUTOCLAIM hands it out again once Redis is back.
            log.warning("entry left pending: redis unavailable", msg_id=entry_id, error=str(exc))
        except Exception:
            log.exception("entry left pending", msg_id=entry_id)

    async def free_slots(self) -> int:
        while len(self.inflight) >= CONCURRENCY:
            await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
        return CONCURRENCY - len(self.inflight)

    async def read_once(self) -> int:
        count = await self.free_slots()
        reply = await self.client.xreadgroup(
            DISPATCH_GROUP,
            self.consumer,
            {self.keys.requests: ">"},
            count=count,
            block=READ_BLOCK_MS,
        )
        n = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.spawn(entry_id, fields)
                n += 1
        return n

    async def reclaim_once(self, min_idle_ms: int = RECLAIM_IDLE_MS) -> int:
        """Take over entries idle for `min_idle_ms` (their consumer died), one page per call."""
        count = await self.free_slots()
        reply = await self.client.xautoclaim(
            self.keys.requests,
            DISPATCH_GROUP,
            self.consumer,
            min_idle_time=min_idle_ms,
            start_id=self.reclaim_cursor,
            count=count,
        )
        self.reclaim_cursor = reply[0]
        claimed = [(entry_id, fields) for entry_id, fields in reply[1] if entry_id is not None]
        for entry_id, fields in claimed:
            self.spawn(entry_id, fields)
        if claimed:
            log.info("reclaimed requests", count=len(claimed))
        return len(claimed)

    async def trim_once(self) -> int:
        """Trim `requests` below the oldest entry any group still needs; returns how many went."""
        return await trim_acknowledged(self.client, self.keys.requests)

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop`, then let in-flight entries finish within SHUTDOWN_GRACE."""
        upkeep = [
            asyncio.create_task(self.every(RECLAIM_INTERVAL_S, self.reclaim_once, stop)),
            asyncio.create_task(self.every(TRIM_INTERVAL_S, self.trim_once, stop)),
        ]
        try:
            await self.keep_going(stop, self.read_forever)
        finally:
            for task in upkeep:
                task.cancel()
            await asyncio.gather(*upkeep, return_exceptions=True)
            await self.drain()

    async def read_forever(self, stop: asyncio.Event) -> None:
        await ensure_group(self.client, self.keys.requests, DISPATCH_GROUP)
        log.info("dispatcher reading", consumer=self.consumer)
        while not stop.is_set():
            await self.read_once()

    async def keep_going(
        self, stop: asyncio.Event, body: Callable[[asyncio.Event], Awaitable[None]]
    ) -> None:
        """Run `body` until `stop`; on a Redis outage wait for Redis and start it again. Any
        other error (say NOGROUP after someone deleted the stream) is logged, and after a pause
        `body` starts again, recreating the group."""
        while not stop.is_set():
            try:
                await body(stop)
            except (*UNAVAILABLE, RedisUnavailable) as exc:
                log.warning("dispatcher: redis unavailable", error=str(exc))
                await wait_for_redis(self.client, stop, log)
            except Exception:
                log.exception("dispatcher loop failed; restarting it")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=RESTART_PAUSE)

    async def every(
        self, interval: float, action: Callable[[], Awaitable[Any]], stop: asyncio.Event
    ) -> None:
        """An upkeep task: run `action` every `interval` seconds; log failures, keep running."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
                return
            try:
                await action()
            except (*UNAVAILABLE, RedisUnavailable) as exc:
                log.warning("upkeep: redis unavailable", action=action.__name__, error=str(exc))
            except Exception:
                log.exception("upkeep failed", action=action.__name__)

    async def drain(self) -> None:
        if not self.inflight:
            return
        _done, pending = await asyncio.wait(self.inflight, timeout=self.settings.shutdown_grace)
        for task in pending:
            task.cancel()  # its entry stays pending and is reclaimed: dispatch is idempotent
        await asyncio.gather(*pending, return_exceptions=True)
