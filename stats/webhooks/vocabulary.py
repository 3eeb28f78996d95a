"""The public webhook event names and the payload of each event.

Payloads follow the shape Resend and useSend use, `{"type": "email.<name>", "timestamp",
"data"}`, with the names of the shared event vocabulary (accepted, queued, sent, failed,
stopped, suppressed, unknown, delivered, bounced, complained, delayed, opened, clicked,
unsubscribed). An endpoint subscribes to short names (`bounced`) or full ones (`email.bounced`),
or to `*`. Internal events without a public name (guard trips, SES informational events) are
never sent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from sesflow.common.keys import request_id
from sesflow.common.schema import Event, EventType

TYPE_PREFIX = "email."
ALL = "*"

# Internal event type -> public name. The one place this mapping lives.
PUBLIC_NAMES: dict[str, str] = {
    EventType.ACCEPTED: "accepted",
    EventType.REQUEUED: "queued",
    EventType.SENT: "sent",
    EventType.FAILED: "failed",
    EventType.SES_REJECTED: "failed",
    EventType.RENDERING_FAILED: "failed",
    EventType.STOPPED: "stopped",
    EventType.SUPPRESSED: "suppressed",
    EventType.UNKNOWN: "unknown",
    EventType.DELIVERED: "delivered",
    EventType.BOUNCED: "bounced",
    EventType.COMPLAINED: "complained",
    EventType.DELIVERY_DELAYED: "delayed",
    EventType.OPENED: "opened",
    EventType.CLICKED: "clicked",
    EventType.UNSUBSCRIBED: "unsubscribed",
}
NAMES = frozenset(PUBLIC_NAMES.values())

_encoder = msgspec.json.Encoder()


def public_name(event: Event) -> str | None:
    return PUBLIC_NAMES.get(event.type)


def subscription_name(name: str) -> str | None:
    """A name an endpoint may subscribe to, normalised (`email.bounced` -> `bounced`)."""
    if name == ALL:
        return ALL
    short = name.removeprefix(TYPE_PREFIX)
    return short if short in NAMES else None


def iso_time(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def event_data(event: Event) -> dict[str, Any]:
    """What `data` holds: the message and recipient, and what the event type adds."""
    data: dict[str, Any] = {"message_id": event.msg_id, "topic": event.topic}
    if event.index >= 0:
        data["request_id"] = request_id(event.msg_id, event.index)
        data["recipient_index"] = event.index
    else:
        data["recipients"] = event.n
    optional = {
        "email": event.email,
        "ses_message_id": event.ses_id,
        "detail": event.detail,
        "reason": event.reason,
        "bounce_type": event.bounce_type,
        "bounce_subtype": event.bounce_subtype,
        "url": event.url,
    }
    data.update({k: v for k, v in optional.items() if v})
    if event.type in (EventType.OPENED, EventType.CLICKED):
        data["first"] = event.unique
    return data


def payload(event: Event, name: str, now_ms: int) -> bytes:
    """The body of every delivery of this event (signed as these exact bytes)."""
    return _encoder.encode(
        {
            "type": TYPE_PREFIX + name,
            "timestamp": iso_time(event.ts or now_ms),
            "data": event_data(event),
        }
    )
