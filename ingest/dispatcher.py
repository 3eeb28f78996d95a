"""The dispatcher: consumer group `dispatch` on `requests`, one job per recipient.

For each entry it applies the stored template the message names (its current version: for an
entry XADDed by a producer, this is when it is accepted), validates the message with the API's
own code (`ingest.validation`, lenient mode: invalid addresses are dropped and counted
`rejected`; anything else invalid, such as a placeholder some recipient cannot fill, dead-letters
the whole entry), drops suppressed recipients (bulk mail: global suppressions and those who
left the message's list; transactional mail: global suppressions only), and runs
`dispatch.lua` per chunk of at most `CHUNK` recipients, which stores the content once and queues
the jobs on `sends` (or on the schedule), idempotently. Only then is the entry acknowledged, so a
crash at any point means redelivery, and redelivery changes nothing that was already done.

An entry that cannot be sent at all (undecodable, wrong types, no valid address, ...) goes to
`requests:dead` with the reason, is counted as `rejected`, and is acknowledged: no entry ever
stops the loop. The loop, its shutdown and its upkeep are `common.consumer.StreamConsumer`'s:
entries of dead consumers are reclaimed (XAUTOCLAIM), `requests` is trimmed below the oldest
entry any group still needs, consumers long gone are forgotten.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from sesflow.common import scripts
from sesflow.common.connection import UNAVAILABLE, transient_reply
from sesflow.common.consumer import StreamConsumer
from sesflow.common.errors import InputError, RedisUnavailable
from sesflow.common.keys import DISPATCH_GROUP, Keys, accepted_ms
from sesflow.common.logs import get_logger
from sesflow.common.mailing_lists import default_list
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
from sesflow.common.suppression import SuppressionList
from sesflow.ingest import metrics
from sesflow.ingest.templates import TemplateStore
from sesflow.ingest.validation import Limits, ValidMessage, validate_message

log = get_logger(__name__)

CHUNK = 1000  # recipients per dispatch.lua call: keeps each call to a few milliseconds
SCHEDULE_CHUNK = 500  # recipients per schedule member
CONCURRENCY = 8  # entries handled at once
RECLAIM_IDLE_MS = 30_000  # far above the time one entry takes (a few ms per chunk)
RECLAIM_INTERVAL_S = 10.0
TRIM_INTERVAL_S = 30.0
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
        configuration_set=request.configuration_set or "",
        tenant=request.tenant or "",
        mailing_list=request.mailing_list or default_list(request.topic_id),
        scheduled_ms=valid.due_ms or 0,
    )


class Dispatcher(StreamConsumer):
    """A `StreamConsumer` of `requests`: each entry is a task (at most CONCURRENCY at once)."""

    group = DISPATCH_GROUP
    role = "dispatcher"
    concurrency = CONCURRENCY

    def __init__(
        self, client: Any, settings: Settings, keys: Keys, consumer: str | None = None
    ) -> None:
        super().__init__(client, settings, consumer=consumer)
        self.keys = keys
        self.reclaim_idle_ms = RECLAIM_IDLE_MS
        self.reclaim_every = RECLAIM_INTERVAL_S
        self.trim_every = TRIM_INTERVAL_S
        self.limits = Limits.from_settings(settings)
        self.suppressions = SuppressionList(client, keys)
        self.script = scripts.register(client, "dispatch")
        self.reject_once = scripts.register(client, "reject_once")
        self.templates = TemplateStore(client, keys)

    def streams(self) -> list[str]:
        return [self.keys.requests]

    async def process(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        await self.handle(entry_id, fields)

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
        rejected_detail = f"invalid addresses: {valid.invalid_detail}" if valid.invalid else ""
        stored = content_of(msg_id, valid)
        content = [part for pair in stored.to_hash().items() for part in pair]
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
            suppressed = await self.suppressions.suppressed_for(chunk, stored.unsubscribe_scope)
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
