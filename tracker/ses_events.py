"""SES feedback, both formats, normalised into `common.schema.Event`s.

- Identity notifications: `notificationType` Bounce, Complaint, Delivery.
- Configuration-set event publishing: `eventType` Send, Reject, Bounce, Complaint, Delivery,
  DeliveryDelay, Open, Click, Rendering Failure, Subscription.

One event per recipient the notification names. The Structs declare only the fields sesflow reads;
every other field is ignored, and an event type sesflow does not know becomes `feedback_unknown`.

Correlation to a request id (`<msg_id>_<index>`), first hit wins: the `sesflow-rid` tag (event
publishing only), the `X-Request-ID` header (only when SES includes original headers), the
`sesid:<SES MessageId>` index the sender writes. The topic is read from the message's content hash
(exact), else taken from the `sesflow-topic` tag (sanitised by the sender), else left empty.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from sesflow.common.connection import Redis, redis_errors
from sesflow.common.keys import Keys, split_request_id
from sesflow.common.schema import RID_TAG, TOPIC_TAG, Event, EventType

from .sns import parse_timestamp

REQUEST_ID_HEADER = "x-request-id"
MAX_DETAIL = 500


class _Lenient(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of every SES Struct: camelCase names, unknown fields ignored."""


class Header(_Lenient, frozen=True, kw_only=True):
    name: str = ""
    value: str = ""


class Mail(_Lenient, frozen=True, kw_only=True):
    message_id: str = ""
    timestamp: str = ""
    destination: list[str] = []
    tags: dict[str, list[str]] = {}
    headers: list[Header] = []


class Recipient(_Lenient, frozen=True, kw_only=True):
    email_address: str = ""
    status: str | None = None
    diagnostic_code: str | None = None


class Bounce(_Lenient, frozen=True, kw_only=True):
    bounce_type: str = "Undetermined"
    bounce_sub_type: str = ""
    bounced_recipients: list[Recipient] = []
    timestamp: str = ""


class Complaint(_Lenient, frozen=True, kw_only=True):
    complained_recipients: list[Recipient] = []
    complaint_feedback_type: str | None = None
    complaint_sub_type: str | None = None
    timestamp: str = ""


class Delivery(_Lenient, frozen=True, kw_only=True):
    recipients: list[str] = []
    smtp_response: str = ""
    timestamp: str = ""


class DeliveryDelay(_Lenient, frozen=True, kw_only=True):
    delay_type: str = ""
    delayed_recipients: list[Recipient] = []
    timestamp: str = ""


class Reject(_Lenient, frozen=True, kw_only=True):
    reason: str = ""


class Opened(_Lenient, frozen=True, kw_only=True):
    timestamp: str = ""


class Clicked(_Lenient, frozen=True, kw_only=True):
    link: str = ""
    timestamp: str = ""


class Failure(_Lenient, frozen=True, kw_only=True):
    error_message: str = ""
    template_name: str = ""


class TopicPreferences(_Lenient, frozen=True, kw_only=True):
    unsubscribe_all: bool = False


class Subscription(_Lenient, frozen=True, kw_only=True):
    contact_list: str = ""
    timestamp: str = ""
    new_topic_preferences: TopicPreferences | None = None


class SesNotification(_Lenient, frozen=True, kw_only=True):
    notification_type: str = ""
    event_type: str = ""
    mail: Mail = Mail()
    bounce: Bounce | None = None
    complaint: Complaint | None = None
    delivery: Delivery | None = None
    delivery_delay: DeliveryDelay | None = None
    reject: Reject | None = None
    open: Opened | None = None
    click: Clicked | None = None
    failure: Failure | None = None
    subscription: Subscription | None = None

    @property
    def kind(self) -> str:
        return self.event_type or self.notification_type


_decoder = msgspec.json.Decoder(SesNotification)


def decode(message: str | bytes | dict[str, Any]) -> SesNotification:
    """`Message` of an SNS notification (a JSON string, or an object in the Go seed's shape).

    Raises msgspec.DecodeError / ValidationError when it is not a JSON object of that shape.
    """
    if isinstance(message, dict):
        return msgspec.convert(message, SesNotification)
    return _decoder.decode(message)


# --- normalisation (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Draft:
    """One recipient's event before correlation, and what else it implies."""

    event: Event
    suppress: str = ""  # suppression reason ("bounce", "complaint") or "" for none
    touch: str = ""  # first-touch kind: "open", "click" or ""


@dataclass(frozen=True, slots=True)
class Feedback:
    ses_id: str
    rid: str  # from tags or headers; "" when the notification does not carry it
    topic_tag: str
    drafts: list[Draft]


def _clip(text: str | None) -> str:
    return (text or "").strip()[:MAX_DETAIL]


def _ms(*stamps: str) -> int:
    for stamp in stamps:
        if stamp:
            try:
                return int(parse_timestamp(stamp) * 1000)
            except ValueError:
                continue
    return int(time.time() * 1000)


def _rid(mail: Mail) -> str:
    tagged = mail.tags.get(RID_TAG) or []
    if tagged and tagged[0]:
        return tagged[0]
    for header in mail.headers:
        if header.name.lower() == REQUEST_ID_HEADER and header.value.strip():
            return header.value.strip()
    return ""


def _each(addresses: list[str], event: Event, suppress: str = "", touch: str = "") -> list[Draft]:
    targets = [a for a in addresses if a] or [""]
    return [
        Draft(msgspec.structs.replace(event, email=a), suppress=suppress, touch=touch)
        for a in targets
    ]


def normalise(note: SesNotification) -> Feedback:
    mail = note.mail
    base = Event(type=EventType.FEEDBACK_UNKNOWN, ses_id=mail.message_id)
    drafts: list[Draft]
    kind = note.kind
    # A missing detail object (the Go seed's minimal shape) still names the event type.
    if kind == "Bounce":
        b = note.bounce or Bounce()
        hard = b.bounce_type == "Permanent"
        drafts = [
            Draft(
                msgspec.structs.replace(
                    base,
                    type=EventType.BOUNCED,
                    ts=_ms(b.timestamp, mail.timestamp),
                    email=r.email_address,
                    bounce_type=b.bounce_type,
                    bounce_subtype=b.bounce_sub_type,
                    detail=_clip(r.diagnostic_code or r.status),
                ),
                suppress="bounce" if hard else "",
            )
            for r in b.bounced_recipients
            if r.email_address
        ] or _each(
            mail.destination,
            msgspec.structs.replace(
                base,
                type=EventType.BOUNCED,
                ts=_ms(b.timestamp, mail.timestamp),
                bounce_type=b.bounce_type,
                bounce_subtype=b.bounce_sub_type,
            ),
            suppress="bounce" if hard else "",
        )
    elif kind == "Complaint":
        c = note.complaint or Complaint()
        event = msgspec.structs.replace(
            base,
            type=EventType.COMPLAINED,
            ts=_ms(c.timestamp, mail.timestamp),
            detail=_clip(c.complaint_feedback_type or c.complaint_sub_type),
        )
        named = [r.email_address for r in c.complained_recipients]
        drafts = _each(named or mail.destination, event, suppress="complaint")
    elif kind == "Delivery":
        d = note.delivery or Delivery()
        event = msgspec.structs.replace(
            base,
            type=EventType.DELIVERED,
            ts=_ms(d.timestamp, mail.timestamp),
            detail=_clip(d.smtp_response),
        )
        drafts = _each(d.recipients or mail.destination, event)
    elif kind == "DeliveryDelay":
        dd = note.delivery_delay or DeliveryDelay()
        drafts = [
            Draft(
                msgspec.structs.replace(
                    base,
                    type=EventType.DELIVERY_DELAYED,
                    ts=_ms(dd.timestamp, mail.timestamp),
                    email=r.email_address,
                    detail=_clip(" ".join(filter(None, (dd.delay_type, r.diagnostic_code)))),
                )
            )
            for r in dd.delayed_recipients
            if r.email_address
        ] or _each(
            mail.destination,
            msgspec.structs.replace(
                base,
                type=EventType.DELIVERY_DELAYED,
                ts=_ms(dd.timestamp, mail.timestamp),
                detail=_clip(dd.delay_type),
            ),
        )
    elif kind == "Send":
        event = msgspec.structs.replace(base, type=EventType.SES_SEND, ts=_ms(mail.timestamp))
        drafts = _each(mail.destination, event)
    elif kind == "Reject":
        reason = note.reject.reason if note.reject else ""
        event = msgspec.structs.replace(
            base, type=EventType.SES_REJECTED, ts=_ms(mail.timestamp), detail=_clip(reason)
        )
        drafts = _each(mail.destination, event)
    elif kind == "Open":
        stamp = note.open.timestamp if note.open else ""
        event = msgspec.structs.replace(base, type=EventType.OPENED, ts=_ms(stamp))
        drafts = _each(mail.destination, event, touch="open")
    elif kind == "Click":
        click = note.click or Clicked()
        event = msgspec.structs.replace(
            base, type=EventType.CLICKED, ts=_ms(click.timestamp), url=click.link[:2000]
        )
        drafts = _each(mail.destination, event, touch="click")
    elif kind == "Rendering Failure":
        failure = note.failure or Failure()
        detail = f"{failure.template_name}: {failure.error_message}".strip(": ")
        event = msgspec.structs.replace(
            base, type=EventType.RENDERING_FAILED, ts=_ms(mail.timestamp), detail=_clip(detail)
        )
        drafts = _each(mail.destination, event)
    elif kind == "Subscription":
        sub = note.subscription or Subscription()
        prefs = sub.new_topic_preferences
        detail = sub.contact_list + (" unsubscribeAll" if prefs and prefs.unsubscribe_all else "")
        event = msgspec.structs.replace(
            base,
            type=EventType.SUBSCRIPTION,
            ts=_ms(sub.timestamp, mail.timestamp),
            detail=_clip(detail),
        )
        drafts = _each(mail.destination, event)
    else:
        event = msgspec.structs.replace(
            base, ts=_ms(mail.timestamp), detail=_clip(kind or "no eventType/notificationType")
        )
        drafts = _each(mail.destination, event)
    topic_tags = mail.tags.get(TOPIC_TAG) or [""]
    return Feedback(ses_id=mail.message_id, rid=_rid(mail), topic_tag=topic_tags[0], drafts=drafts)


# --- correlation (reads Redis) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Correlation:
    msg_id: str = ""  # "" when the mail is not one sesflow can place
    index: int = -1
    topic: str = ""


class Correlator:
    """Finds the request behind an SES message. Topics are cached: they never change."""

    def __init__(self, client: Redis, keys: Keys, cache_size: int = 4096) -> None:
        self._client = client
        self._keys = keys
        self._topics: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size

    async def correlate(self, ses_id: str, rid: str = "", topic_hint: str = "") -> Correlation:
        if not rid and ses_id:
            with redis_errors():
                rid = cast(str | None, await self._client.get(self._keys.ses_message(ses_id))) or ""
        parsed = split_request_id(rid) if rid else None
        if parsed is None:
            return Correlation(topic=topic_hint)
        msg_id, index = parsed
        topic = await self.topic_of(msg_id) or topic_hint
        return Correlation(msg_id=msg_id, index=index, topic=topic)

    async def topic_of(self, msg_id: str) -> str:
        """The exact topic from the message's content hash ("" once that has expired)."""
        cached = self._topics.get(msg_id)
        if cached is not None:
            self._topics.move_to_end(msg_id)
            return cached
        key = self._keys.for_message(msg_id).message(msg_id)
        with redis_errors():
            topic = cast(str | None, await self._client.hget(key, "topic"))
        if topic is None:
            return ""
        self._topics[msg_id] = topic
        while len(self._topics) > self._cache_size:
            self._topics.popitem(last=False)
        return str(topic)

    def apply(self, feedback: Feedback, where: Correlation) -> list[Draft]:
        return [
            Draft(
                msgspec.structs.replace(
                    d.event, msg_id=where.msg_id, index=where.index, topic=where.topic
                ),
                suppress=d.suppress,
                touch=d.touch if where.msg_id else "",
            )
            for d in feedback.drafts
        ]
