"""The soft-bounce rule: an address whose mail bounced softly SOFT_BOUNCE_LIMIT times within
SOFT_BOUNCE_WINDOW is suppressed, with reason `soft_bounce` (SOFT_BOUNCE_LIMIT=0: never).

What counts: a Transient bounce of subtype General or MailboxFull (or none). MessageTooLarge,
ContentRejected and AttachmentRejected are about the mail, not the address, and an Undetermined
bounce says nothing either way: they do not count.

How: one `soft_bounce` script call per soft-bounced address, on a small sorted set of its own
(`Keys.soft_bounces`) that keeps at most SOFT_BOUNCE_LIMIT bounces and expires one window after
the last. The member is the SES MessageId of the bounced mail (one mail bounces once per
recipient), or the SNS MessageId when the notification names no mail: counting the same bounce
again changes nothing, whether SNS redelivers it or SES publishes it to two topics.

Where: the webhook counts after its duplicate check and before the suppression writes and
`record_events`, like the suppressions themselves: a crash between the count and the record
leaves a count that SNS's retry finds already there (idempotent), never a lost one.
"""

from __future__ import annotations

import dataclasses
import time

from sesflow.common.connection import Redis, redis_errors
from sesflow.common.keys import Keys
from sesflow.common.schema import EventType
from sesflow.common.scripts import register
from sesflow.common.settings import Settings
from sesflow.common.suppression import normalise
from sesflow.tracker.metrics import SOFT_BOUNCES
from sesflow.tracker.ses_events import Draft

SCRIPT = "soft_bounce"
REASON = "soft_bounce"
TRANSIENT = "Transient"
# Subtypes of a Transient bounce that say something about the address ("" = none given).
COUNTED_SUBTYPES = frozenset({"", "General", "MailboxFull"})


class SoftBounces:
    def __init__(self, client: Redis, keys: Keys, settings: Settings) -> None:
        self._script = register(client, SCRIPT)
        self._keys = keys
        self.limit = settings.soft_bounce_limit
        self.window_ms = settings.soft_bounce_window * 1000

    def counts(self, draft: Draft) -> bool:
        """Whether this draft is a soft bounce the rule counts."""
        event = draft.event
        return (
            self.limit > 0
            and event.type == EventType.BOUNCED
            and event.bounce_type == TRANSIENT
            and event.bounce_subtype in COUNTED_SUBTYPES
            and bool(event.email)
            and not draft.suppress
        )

    async def count(self, email: str, bounce: str, at_ms: int, now_ms: int | None = None) -> int:
        """Count one soft bounce (`bounce` names it); the address's soft bounces in the window."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        key = self._keys.soft_bounces(normalise(email))
        with redis_errors():
            reply = await self._script(
                keys=[key], args=[bounce, at_ms or now, now, self.window_ms, self.limit]
            )
        return int(reply)

    async def apply(self, drafts: list[Draft], bounce: str) -> list[Draft]:
        """`drafts`, each soft bounce that reaches the limit marked to suppress its address.
        `bounce` names the bounced mail (the SES MessageId). Raises RedisUnavailable."""
        out = []
        for draft in drafts:
            if self.counts(draft):
                seen = await self.count(draft.event.email, bounce, draft.event.ts)
                SOFT_BOUNCES.labels("counted").inc()
                if seen >= self.limit:
                    SOFT_BOUNCES.labels("suppressed").inc()
                    draft = dataclasses.replace(draft, suppress=REASON)
            out.append(draft)
        return out
