"""Which request an SES notification is about: reads Redis, after `ses_events` parsed it.

The request id (`<msg_id>_<index>`), first hit wins: the one the mail carries (the `sesflow-rid`
tag or the `X-Request-ID` header, read by `ses_events.normalise`), else the link the sender wrote
for the SES MessageId (`common.ses_links`: the hashes of the send day, read around the mail's
`mail.timestamp`, then of every day of the retention), else the per-mail
`sesid:<SES MessageId>` key older versions wrote. The topic is read from the message's content
hash (exact), else taken from the `sesflow-topic` tag (sanitised by the sender), else left empty.

Each correlation also tells the sender whether links are needed: `feedback:tagged` and
`feedback:untagged` are renewed (at most once a minute per process) while feedback of each kind
arrives (see `sender.ses_links`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

import msgspec

from sesflow.common.connection import Redis, redis_errors
from sesflow.common.day_buckets import DAY_S, day_of, days_to_read
from sesflow.common.keys import Keys, split_request_id
from sesflow.common.ses_links import link_lookups
from sesflow.tracker.ses_events import Draft, Feedback

MARK_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Correlation:
    msg_id: str = ""  # "" when the mail is not one sesflow can place
    index: int = -1
    topic: str = ""


class Correlator:
    """Finds the request behind an SES message. Topics are cached: they never change."""

    def __init__(
        self, client: Redis, keys: Keys, retention: int = 14 * DAY_S, cache_size: int = 4096
    ) -> None:
        self._client = client
        self._keys = keys
        self._retention = retention
        self._topics: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self._marked: dict[str, float] = {}

    async def correlate(
        self, ses_id: str, rid: str = "", topic_hint: str = "", sent_ms: int = 0
    ) -> Correlation:
        if ses_id:
            await self._mark(self._keys.feedback_tagged if rid else self._keys.feedback_untagged)
        if not rid and ses_id:
            rid = await self.linked(ses_id, sent_ms)
        parsed = split_request_id(rid) if rid else None
        if parsed is None:
            return Correlation(topic=topic_hint)
        msg_id, index = parsed
        topic = await self.topic_of(msg_id) or topic_hint
        return Correlation(msg_id=msg_id, index=index, topic=topic)

    async def linked(self, ses_id: str, sent_ms: int) -> str:
        """The request id the sender linked to `ses_id` ("" when none is known): first in the
        hashes of the send day and its neighbours (clocks that disagree near midnight), then,
        when that misses or the mail has no timestamp, in every day of the retention."""
        every = days_to_read(time.time(), self._retention)
        if sent_ms:
            day = day_of(sent_ms / 1000)
            found = await self._read_links(ses_id, [day, day - 1, day + 1], legacy=True)
            if found:
                return found
            every = [d for d in every if abs(d - day) > 1]
            return await self._read_links(ses_id, every, legacy=False) if every else ""
        return await self._read_links(ses_id, every, legacy=True)

    async def _read_links(self, ses_id: str, days: list[int], legacy: bool) -> str:
        field, hashes = link_lookups(self._keys, ses_id, days)
        with redis_errors():
            pipe = self._client.pipeline(transaction=False)
            for key in hashes:
                pipe.hget(key, field)
            if legacy:
                pipe.get(self._keys.ses_message(ses_id))  # written by older versions
            found = await pipe.execute()
        return next((str(v) for v in found if v), "")

    async def _mark(self, key: str) -> None:
        """Renew a feedback-kind mark, at most once a minute per process."""
        now = time.monotonic()
        if now - self._marked.get(key, float("-inf")) < MARK_EVERY_S:
            return
        self._marked[key] = now
        with redis_errors():
            await self._client.set(key, "1", ex=self._retention)

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
