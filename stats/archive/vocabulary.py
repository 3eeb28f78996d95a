"""The archive's words: the name each stream event is stored under, and the recipient states.

An event keeps its `common.schema.EventType` value as its name, except where the public word
differs (`delivery_delayed` is `delayed`; `requeued`, a failed recipient put back on `sends`,
makes it `queued` again). Every event is archived, including the ones that change no state.

A recipient's `state` is the highest-ranked state its events reached (`STATE_RANK`), not its
latest event: feedback arrives late and out of order (an open may come before its delivery
notification, a redelivered `sent` after a `bounced`), and what a recipient reached does not
go back. Equal ranks: the later event wins; an exact tie (same rank, same millisecond) keeps
the state stored first, so applying an event twice changes nothing. Its `last_event` is the
latest event of any kind (same millisecond: the higher rank).

    queued 0 < unknown 10 < failed, stopped, suppressed 20 < sent 30 < delayed 40
      < delivered 50 < opened 60 < clicked 70 < bounced, failed by SES (rejected, rendering
      failure) 80 < complained 90 < unsubscribed 100

Events about a whole message (`index` -1: accepted, rejected, and the counts of recipients the
dispatcher suppressed or stopped) are stored, but set no recipient's state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sesflow.common.schema import EventType

QUEUED = "queued"
DELAYED = "delayed"
FAILED = "failed"

# Stream event type -> the name it is archived under, where they differ.
PUBLIC_NAMES: dict[str, str] = {
    EventType.DELIVERY_DELAYED: DELAYED,
    EventType.REQUEUED: QUEUED,
}

# Stream event type -> the recipient state it sets; types not listed set none (ses_send,
# subscription, feedback_unknown, guard_tripped, the message-level ones).
EVENT_STATES: dict[str, str] = {
    EventType.REQUEUED: QUEUED,
    EventType.UNKNOWN: EventType.UNKNOWN,
    EventType.FAILED: FAILED,
    EventType.STOPPED: EventType.STOPPED,
    EventType.SUPPRESSED: EventType.SUPPRESSED,
    EventType.SENT: EventType.SENT,
    EventType.DELIVERY_DELAYED: DELAYED,
    EventType.DELIVERED: EventType.DELIVERED,
    EventType.OPENED: EventType.OPENED,
    EventType.CLICKED: EventType.CLICKED,
    EventType.BOUNCED: EventType.BOUNCED,
    EventType.SES_REJECTED: FAILED,
    EventType.RENDERING_FAILED: FAILED,
    EventType.COMPLAINED: EventType.COMPLAINED,
    EventType.UNSUBSCRIBED: EventType.UNSUBSCRIBED,
}

STATE_RANK: dict[str, int] = {
    QUEUED: 0,
    EventType.UNKNOWN: 10,
    FAILED: 20,
    EventType.STOPPED: 20,
    EventType.SUPPRESSED: 20,
    EventType.SENT: 30,
    DELAYED: 40,
    EventType.DELIVERED: 50,
    EventType.OPENED: 60,
    EventType.CLICKED: 70,
    EventType.BOUNCED: 80,
    EventType.COMPLAINED: 90,
    EventType.UNSUBSCRIBED: 100,
}

# The rank of a ranking event that sets no state: below every state (only `last_event` uses it).
NO_STATE_RANK = -1

# Events that carry the recipient's SES MessageId as the result of a send.
SEND_RESULTS = frozenset({EventType.SENT})


@dataclass(frozen=True, slots=True)
class Word:
    """What the archive makes of one stream event type."""

    name: str  # archived as
    state: str  # the recipient state it sets; "" for none
    rank: int  # the state's rank (NO_STATE_RANK for none)
    send_result: bool  # carries the SES MessageId of a send


@functools.cache
def word_of(event_type: str) -> Word:
    found = state_of(event_type)
    state, rank = found if found is not None else ("", NO_STATE_RANK)
    return Word(public_name(event_type), state, rank, event_type in SEND_RESULTS)


def public_name(event_type: str) -> str:
    return PUBLIC_NAMES.get(event_type, event_type)


def state_of(event_type: str) -> tuple[str, int] | None:
    """(state, rank) an event sets, or None."""
    state = EVENT_STATES.get(event_type)
    return None if state is None else (state, STATE_RANK[state])


def event_rank(event_type: str) -> int:
    found = state_of(event_type)
    return NO_STATE_RANK if found is None else found[1]
