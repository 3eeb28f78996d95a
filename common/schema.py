"""The messages that travel between processes: one Struct per stream, one encoder, typed decoders.

Every field added later must have a default, so old entries still decode.

Stream `requests`: one entry per message object, field `message` = JSON of `MessageRequest`.
Stream `sends`:    one entry per recipient, flat fields `m` (message id), `i` (recipient index),
                   `e` (address): compact, because a campaign queues millions of them.
Stream `events`:   field `e` = JSON of `Event`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

from sesflow.common.keys import request_id
from sesflow.common.mailing_lists import default_list

REQUEST_FIELD = "message"
EVENT_FIELD = "e"
# SES message tags the sender sets and the tracker reads back from SES feedback.
RID_TAG = "sesflow-rid"
TOPIC_TAG = "sesflow-topic"


class Recipient(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One recipient with their own merge data (over the message's `data`)."""

    email: str
    data: dict[str, Any] | None = None


class Attachment(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A file sent with every recipient's mail; `content` is base64."""

    filename: str
    content: str
    content_type: str = ""


BULK = "bulk"
TRANSACTIONAL = "transactional"
LANES = (BULK, TRANSACTIONAL)


class MessageRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message: a subject and HTML content for a list of recipients of one topic.

    This is what producers XADD onto the `requests` stream (as JSON in the field `message`) and
    what the HTTP API turns each element of `messages[]` into. Either `subject` and `content`
    (and optionally `text`) or a stored `template` give the content; `emails` and/or
    `recipients` (addresses with their own merge data) the recipients.
    """

    topic_id: str
    emails: list[str] = msgspec.field(default_factory=list)
    subject: str = ""
    content: str = ""
    # RFC 3339 or "YYYY-MM-DD HH:MM:SS" (UTC); None or empty = send now.
    scheduled_at: str | None = None
    track_opens: bool = True
    track_clicks: bool = False
    # Add List-Unsubscribe / List-Unsubscribe-Post (RFC 8058); off for transactional mail.
    unsubscribe: bool = True
    # Optional sender override (must be a verified SES identity).
    from_email: str | None = None
    # The plain-text part; None = generated from the HTML when the message is accepted.
    text: str | None = None
    # Merge data for every recipient (a recipient's own data wins, key by key).
    data: dict[str, Any] | None = None
    recipients: list[Recipient] = msgspec.field(default_factory=list)
    # A stored template (PUT /v1/templates/{name}) instead of subject/content/text.
    template: str | None = None
    reply_to: list[str] = msgspec.field(default_factory=list)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    attachments: list[Attachment] = msgspec.field(default_factory=list)
    # "transactional" mail takes the next rate token before any bulk mail; "bulk" shares what is
    # left fairly between the topics sending at the same time, in proportion to `weight`.
    lane: str = BULK
    weight: float = 1.0
    # The SES configuration set (None: SES_CONFIGURATION_SET) and SES tenant (`TenantName`) it
    # is sent with; each must be allowed (`common.ses_setup`).
    configuration_set: str | None = None
    tenant: str | None = None
    # The mailing list (JSON `"list"`, a short token, `common.mailing_lists`) whose unsubscribes
    # this message honours; None = the topic's list.
    mailing_list: str | None = msgspec.field(default=None, name="list")

    @property
    def recipient_count(self) -> int:
        return len(self.emails) + len(self.recipients)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient of one message, as queued on `sends`."""

    msg_id: str
    index: int
    email: str
    # The recipient's own merge data: a compact JSON object, "" when none (field `d`, omitted
    # when empty). The message's defaults live once in its content hash.
    data: str = ""

    def fields(self) -> dict[str, str]:
        fields = {"m": self.msg_id, "i": str(self.index), "e": self.email}
        if self.data:
            fields["d"] = self.data
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Job:
        """Raises ValueError for an entry that is not a job (poison entries are dead-lettered)."""
        try:
            msg_id, index, email = fields["m"], int(fields["i"]), fields["e"]
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"malformed job entry: {fields!r}") from exc
        if not msg_id or index < 0 or "@" not in email:
            raise ValueError(f"malformed job entry: {fields!r}")
        return cls(msg_id=msg_id, index=index, email=email, data=fields.get("d", ""))

    @property
    def request_id(self) -> str:
        return request_id(self.msg_id, self.index)


class MessageContent(msgspec.Struct, frozen=True, kw_only=True):
    """A message's content as the dispatcher stores it once (hash `msg:<msg_id>`)."""

    msg_id: str
    topic: str
    subject: str
    html: str
    from_email: str = ""
    track_opens: bool = True
    track_clicks: bool = False
    unsubscribe: bool = True
    total: int = 0
    accepted_ms: int = 0
    # The plain-text part: given, or generated from the HTML at accept time ("" in hashes
    # written before text parts existed).
    text: str = ""
    # Merge defaults for every recipient: a JSON object, "" when none.
    data: str = ""
    reply_to: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    # A JSON list of {"filename", "content_type", "content" (base64)}, "" when none; stored once
    # per message, never per recipient.
    attachments: str = ""
    lane: str = BULK
    weight: float = 1.0
    # "" = SES_CONFIGURATION_SET of the sender, and no tenant.
    configuration_set: str = ""
    tenant: str = ""
    # The message's list ("" in hashes written before lists: then the topic's, `list_name`).
    mailing_list: str = ""

    @property
    def list_name(self) -> str:
        return self.mailing_list or default_list(self.topic)

    @property
    def unsubscribe_scope(self) -> str:
        """The list whose unsubscribes stop this mail: its own for bulk mail, none ("") for
        transactional mail, which only the global suppression list stops."""
        return self.list_name if self.lane == BULK else ""

    # The time the message was scheduled for (epoch ms; 0: send now), for the history archive.
    scheduled_ms: int = 0

    def to_hash(self) -> dict[str, str]:
        # `lane` and `weight` are read by dispatch.lua and promote.lua: stored only when they
        # differ from bulk and 1.
        extra = {
            "text": self.text,
            "data": self.data,
            "reply_to": _encoder.encode(list(self.reply_to)).decode() if self.reply_to else "",
            "headers": _encoder.encode(list(self.headers)).decode() if self.headers else "",
            "att": self.attachments,
            "lane": self.lane if self.lane != BULK else "",
            "weight": repr(self.weight) if self.weight != 1.0 else "",
            "cset": self.configuration_set,
            "tenant": self.tenant,
            "list": self.mailing_list,
            "scheduled_ms": str(self.scheduled_ms) if self.scheduled_ms else "",
        }
        return {k: v for k, v in extra.items() if v} | {
            "topic": self.topic,
            "subject": self.subject,
            "html": self.html,
            "from": self.from_email,
            "track_opens": "1" if self.track_opens else "0",
            "track_clicks": "1" if self.track_clicks else "0",
            "unsubscribe": "1" if self.unsubscribe else "0",
            "total": str(self.total),
            "accepted_ms": str(self.accepted_ms),
        }

    @classmethod
    def from_hash(cls, msg_id: str, data: dict[str, str]) -> MessageContent:
        """Raises ValueError when the hash is missing (expired) or incomplete."""
        if not data or "html" not in data or "subject" not in data:
            raise ValueError(f"no content stored for message {msg_id}")
        return cls(
            msg_id=msg_id,
            topic=data.get("topic", ""),
            subject=data["subject"],
            html=data["html"],
            from_email=data.get("from", ""),
            track_opens=data.get("track_opens", "1") == "1",
            track_clicks=data.get("track_clicks", "0") == "1",
            unsubscribe=data.get("unsubscribe", "1") == "1",
            total=int(data.get("total") or 0),
            accepted_ms=int(data.get("accepted_ms") or 0),
            text=data.get("text", ""),
            data=data.get("data", ""),
            reply_to=tuple(_string_list(data.get("reply_to"))),
            headers=tuple(_header_pairs(data.get("headers"))),
            attachments=data.get("att", ""),
            lane=data.get("lane") or BULK,
            weight=float(data.get("weight") or 1.0),
            configuration_set=data.get("cset", ""),
            tenant=data.get("tenant", ""),
            mailing_list=data.get("list", ""),
            scheduled_ms=int(data.get("scheduled_ms") or 0),
        )


def _string_list(raw: str | None) -> list[str]:
    return msgspec.json.decode(raw, type=list[str]) if raw else []


def _header_pairs(raw: str | None) -> list[tuple[str, str]]:
    return msgspec.json.decode(raw, type=list[tuple[str, str]]) if raw else []


class EventType(StrEnum):
    # pipeline
    ACCEPTED = "accepted"  # recipients queued (n = count)
    REJECTED = "rejected"  # a message or recipients refused by validation
    SUPPRESSED = "suppressed"  # dropped: the address is on the suppression list
    STOPPED = "stopped"  # cancelled before sending
    SENT = "sent"  # SES accepted the message (ses_id set)
    FAILED = "failed"  # will not be sent (detail says why)
    UNKNOWN = "unknown"  # sender died mid-call: may or may not have been sent
    REQUEUED = "requeued"  # a failed recipient put back on `sends` (dlq replay): failed -= n
    # the reputation guard paused a topic (or, topic "", all bulk sending); detail = reason
    GUARD_TRIPPED = "guard_tripped"
    # a webhook endpoint failing for WEBHOOK_DISABLE_AFTER was disabled; detail = id and url
    WEBHOOK_DISABLED = "webhook_disabled"
    # SES feedback
    DELIVERED = "delivered"
    BOUNCED = "bounced"  # bounce_type Permanent | Transient | Undetermined
    COMPLAINED = "complained"
    DELIVERY_DELAYED = "delivery_delayed"
    SES_REJECTED = "ses_rejected"  # SES "Reject" event (virus etc.)
    RENDERING_FAILED = "rendering_failed"
    SES_SEND = "ses_send"  # SES "Send" event: informational
    SUBSCRIPTION = "subscription"
    FEEDBACK_UNKNOWN = "feedback_unknown"  # an SES event type sesflow does not know yet
    # recipients
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"


# States a recipient ends in; the sender's state hash stores these one-letter codes.
FINAL_EVENTS = {
    EventType.SENT,
    EventType.FAILED,
    EventType.STOPPED,
    EventType.SUPPRESSED,
    EventType.UNKNOWN,
}


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Something that happened to a message or to one of its recipients."""

    type: str
    ts: int = 0  # epoch milliseconds
    topic: str = ""
    msg_id: str = ""
    index: int = -1  # recipient index; -1 when the event is about a whole message
    n: int = 1  # how many recipients this event counts for
    email: str = ""
    ses_id: str = ""
    detail: str = ""
    bounce_type: str = ""
    bounce_subtype: str = ""
    url: str = ""
    unique: bool = False  # first open / click of this recipient
    # `failed`: why (rejected:<code>, transient:<code>, max_attempts, no_content); the delivery
    # state keeps only that it failed
    reason: str = ""


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(MessageRequest)
_event_decoder = msgspec.json.Decoder(Event)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_request(data: bytes | str) -> MessageRequest:
    """Raises msgspec.DecodeError / ValidationError on a malformed entry."""
    return _request_decoder.decode(data)


def decode_event(data: bytes | str) -> Event:
    return _event_decoder.decode(data)


def event_fields(event: Event) -> dict[str, bytes]:
    return {EVENT_FIELD: _encoder.encode(event)}
