"""SES feedback, both formats, parsed into `common.schema.Event`s: pure, no Redis.

- Identity notifications: `notificationType` Bounce, Complaint, Delivery.
- Configuration-set event publishing: `eventType` Send, Reject, Bounce, Complaint, Delivery,
  DeliveryDelay, Open, Click, Rendering Failure, Subscription.

One event per recipient the notification names. The Structs declare only the fields sesflow
reads; every other field is ignored, and an event type sesflow does not know becomes
`feedback_unknown`.

What suppresses an address is `common.ses_feedback`'s rule: a Permanent bounce (unless of subtype
OnAccountSuppressionList) and a complaint (unless `not-spam` or of subtype
OnAccountSuppressionList). A complaint's `detail` is its feedback type (its subtype without one),
a delay's starts with its delay type: stats counts them by these. Repeated soft bounces are
`tracker.soft_bounces`'s business.

Each event type has one small parser in `PARSERS`; a missing detail object (the Go service's
minimal shape) still names the event type, and a notification naming no recipient gives one event
for each `mail.destination` (or one with no address). `normalise` also reads what the mail itself
says about its request: the `sesflow-rid` tag (event publishing only) or the `X-Request-ID` header
(only when SES includes original headers), and the `sesflow-topic` tag. Finding the request and
its topic in Redis is `tracker.correlation`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from sesflow.common.schema import RID_TAG, TOPIC_TAG, Event, EventType
from sesflow.common.ses_feedback import bounce_suppresses, complaint_suppresses
from sesflow.tracker.sns import parse_timestamp

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
    """`Message` of an SNS notification (a JSON string, or an object in the Go service's shape).

    Raises msgspec.DecodeError / ValidationError when it is not a JSON object of that shape.
    """
    if isinstance(message, dict):
        return msgspec.convert(message, SesNotification)
    return _decoder.decode(message)


# --- normalisation ------------------------------------------------------------------------------


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
    sent_ms: int = 0  # `mail.timestamp`: when SES took the mail (0 when absent or unreadable)


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
    """One draft per address, or one with no address when there is none."""
    targets = [a for a in addresses if a] or [""]
    return [
        Draft(msgspec.structs.replace(event, email=a), suppress=suppress, touch=touch)
        for a in targets
    ]


def _per_recipient(
    recipients: list[Recipient],
    event: Event,
    detail: Callable[[Recipient], str],
    destination: list[str],
    suppress: str = "",
) -> list[Draft]:
    """One draft per named recipient with its own detail; else one per `destination` address,
    with `event`'s detail."""
    named = [
        Draft(
            msgspec.structs.replace(event, email=r.email_address, detail=_clip(detail(r))),
            suppress=suppress,
        )
        for r in recipients
        if r.email_address
    ]
    return named or _each(destination, event, suppress=suppress)


# A parser turns a notification into drafts, from `base`: a `feedback_unknown` event that carries
# the SES MessageId already.
Parser = Callable[[SesNotification, Event], list[Draft]]


def _replace(base: Event, **changes: Any) -> Event:
    return msgspec.structs.replace(base, **changes)


def _bounce(note: SesNotification, base: Event) -> list[Draft]:
    b = note.bounce or Bounce()
    event = _replace(
        base,
        type=EventType.BOUNCED,
        ts=_ms(b.timestamp, note.mail.timestamp),
        bounce_type=b.bounce_type,
        bounce_subtype=b.bounce_sub_type,
    )
    return _per_recipient(
        b.bounced_recipients,
        event,
        lambda r: r.diagnostic_code or r.status or "",
        note.mail.destination,
        suppress="bounce" if bounce_suppresses(b.bounce_type, b.bounce_sub_type) else "",
    )


def _complaint(note: SesNotification, base: Event) -> list[Draft]:
    c = note.complaint or Complaint()
    event = _replace(
        base,
        type=EventType.COMPLAINED,
        ts=_ms(c.timestamp, note.mail.timestamp),
        detail=_clip(c.complaint_feedback_type or c.complaint_sub_type),
    )
    named = [r.email_address for r in c.complained_recipients]
    suppress = "complaint" if complaint_suppresses(event.detail) else ""
    return _each(named or note.mail.destination, event, suppress=suppress)


def _delivery(note: SesNotification, base: Event) -> list[Draft]:
    d = note.delivery or Delivery()
    event = _replace(
        base,
        type=EventType.DELIVERED,
        ts=_ms(d.timestamp, note.mail.timestamp),
        detail=_clip(d.smtp_response),
    )
    return _each(d.recipients or note.mail.destination, event)


def _delivery_delay(note: SesNotification, base: Event) -> list[Draft]:
    dd = note.delivery_delay or DeliveryDelay()
    event = _replace(
        base,
        type=EventType.DELIVERY_DELAYED,
        ts=_ms(dd.timestamp, note.mail.timestamp),
        detail=_clip(dd.delay_type),
    )
    return _per_recipient(
        dd.delayed_recipients,
        event,
        lambda r: " ".join(filter(None, (dd.delay_type, r.diagnostic_code))),
        note.mail.destination,
    )


def _send(note: SesNotification, base: Event) -> list[Draft]:
    event = _replace(base, type=EventType.SES_SEND, ts=_ms(note.mail.timestamp))
    return _each(note.mail.destination, event)


def _reject(note: SesNotification, base: Event) -> list[Draft]:
    reason = note.reject.reason if note.reject else ""
    event = _replace(
        base, type=EventType.SES_REJECTED, ts=_ms(note.mail.timestamp), detail=_clip(reason)
    )
    return _each(note.mail.destination, event)


def _open(note: SesNotification, base: Event) -> list[Draft]:
    stamp = note.open.timestamp if note.open else ""
    event = _replace(base, type=EventType.OPENED, ts=_ms(stamp))
    return _each(note.mail.destination, event, touch="open")


def _click(note: SesNotification, base: Event) -> list[Draft]:
    click = note.click or Clicked()
    event = _replace(base, type=EventType.CLICKED, ts=_ms(click.timestamp), url=click.link[:2000])
    return _each(note.mail.destination, event, touch="click")


def _rendering_failure(note: SesNotification, base: Event) -> list[Draft]:
    failure = note.failure or Failure()
    detail = f"{failure.template_name}: {failure.error_message}".strip(": ")
    event = _replace(
        base, type=EventType.RENDERING_FAILED, ts=_ms(note.mail.timestamp), detail=_clip(detail)
    )
    return _each(note.mail.destination, event)


def _subscription(note: SesNotification, base: Event) -> list[Draft]:
    sub = note.subscription or Subscription()
    prefs = sub.new_topic_preferences
    detail = sub.contact_list + (" unsubscribeAll" if prefs and prefs.unsubscribe_all else "")
    event = _replace(
        base,
        type=EventType.SUBSCRIPTION,
        ts=_ms(sub.timestamp, note.mail.timestamp),
        detail=_clip(detail),
    )
    return _each(note.mail.destination, event)


def _unknown(note: SesNotification, base: Event) -> list[Draft]:
    detail = _clip(note.kind or "no eventType/notificationType")
    return _each(note.mail.destination, _replace(base, ts=_ms(note.mail.timestamp), detail=detail))


# `eventType` (event publishing) or `notificationType` (identity notifications) -> its parser.
PARSERS: dict[str, Parser] = {
    "Bounce": _bounce,
    "Complaint": _complaint,
    "Delivery": _delivery,
    "DeliveryDelay": _delivery_delay,
    "Send": _send,
    "Reject": _reject,
    "Open": _open,
    "Click": _click,
    "Rendering Failure": _rendering_failure,
    "Subscription": _subscription,
}


def normalise(note: SesNotification) -> Feedback:
    mail = note.mail
    base = Event(type=EventType.FEEDBACK_UNKNOWN, ses_id=mail.message_id)
    drafts = PARSERS.get(note.kind, _unknown)(note, base)
    topic_tags = mail.tags.get(TOPIC_TAG) or [""]
    return Feedback(
        ses_id=mail.message_id,
        rid=_rid(mail),
        topic_tag=topic_tags[0],
        drafts=drafts,
        sent_ms=_ms(mail.timestamp) if mail.timestamp else 0,
    )
