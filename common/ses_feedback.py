"""What SES feedback means beyond its event type: shared by the tracker (what to suppress) and
stats (what to count). Pure, no Redis.

- A bounce of subtype `OnAccountSuppressionList` is SES refusing to try an address on the
  account's own suppression list: it says nothing new about the address or the sender's
  reputation. It counts as `bounced_suppressed` (not `bounced` nor `bounced_hard`), and the
  tracker does not put the address back on sesflow's list (the operator may just have taken it
  off; SES keeps its own).
- A complaint whose feedback type is `not-spam` is a recipient's report that the mail is wanted:
  `complained_not_spam`, never a suppression. A complaint of subtype `OnAccountSuppressionList`
  (SES did not send to an address on its list for an earlier complaint) is
  `complained_suppressed`, never a suppression either. Neither is in `complained`.
- A `DeliveryDelay` event carries its delay type as the first word of the event's `detail`;
  each known type has its own counter next to `delivery_delayed`. A delay is never final.

A complaint event's `detail` is its feedback type (or, without one, its subtype): that is how
stats tells these complaints apart from the stream alone.
"""

from __future__ import annotations

import re

from sesflow.common.schema import Event, EventType

ON_ACCOUNT_SUPPRESSION_LIST = "OnAccountSuppressionList"
NOT_SPAM = "not-spam"
PERMANENT = "Permanent"

# The counter fields these rules add (beside `bounced_hard` and `bounced_soft`).
BOUNCED_SUPPRESSED = "bounced_suppressed"
COMPLAINED_NOT_SPAM = "complained_not_spam"
COMPLAINED_SUPPRESSED = "complained_suppressed"

# SES's `deliveryDelay.delayType` values, each counted as `delivery_delayed_<snake_case>`. An
# unknown type counts in `delivery_delayed` alone: a field name never comes from the input.
DELAY_TYPES = (
    "InternalFailure",
    "General",
    "MailboxFull",
    "SpamDetected",
    "RecipientServerError",
    "IPFailure",
    "TransientCommunicationFailure",
    "BYOIPHostNameLookupUnavailable",
    "Undetermined",
    "SendingDeferral",
)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


DELAY_FIELDS: dict[str, str] = {t: f"{EventType.DELIVERY_DELAYED}_{_snake(t)}" for t in DELAY_TYPES}
FIELDS = (BOUNCED_SUPPRESSED, COMPLAINED_NOT_SPAM, COMPLAINED_SUPPRESSED, *DELAY_FIELDS.values())


def bounce_suppresses(bounce_type: str, subtype: str) -> bool:
    """A hard bounce suppresses the address, unless SES only refused it from its own list."""
    return bounce_type == PERMANENT and subtype != ON_ACCOUNT_SUPPRESSION_LIST


def complaint_kind(detail: str) -> str:
    """The counter a complaint with this feedback type (or subtype) counts in."""
    if detail.strip().lower() == NOT_SPAM:
        return COMPLAINED_NOT_SPAM
    if detail.strip() == ON_ACCOUNT_SUPPRESSION_LIST:
        return COMPLAINED_SUPPRESSED
    return str(EventType.COMPLAINED)


def complaint_suppresses(detail: str) -> bool:
    return complaint_kind(detail) == EventType.COMPLAINED


def bounce_counters(event: Event) -> tuple[str, ...]:
    """The counter fields a `bounced` event adds its `n` to."""
    if event.bounce_subtype == ON_ACCOUNT_SUPPRESSION_LIST:
        return (BOUNCED_SUPPRESSED,)
    kind = "bounced_hard" if event.bounce_type == PERMANENT else "bounced_soft"
    return (str(EventType.BOUNCED), kind)


def delay_type(detail: str) -> str:
    """The delay type a `delivery_delayed` event's detail starts with; "" when none is known."""
    first = detail.split(maxsplit=1)[0] if detail.strip() else ""
    return first if first in DELAY_FIELDS else ""
