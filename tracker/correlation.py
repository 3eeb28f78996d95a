"""Which request an SES notification is about: reads Redis, after `ses_events` parsed it.

The request id (`<msg_id>_<index>`), first hit wins: the one the mail carries (the `sesflow-rid`
tag or the `X-Request-ID` header, read by `ses_events.normalise`), else the `sesid:<SES MessageId>`
index the sender writes. The topic is read from the message's content hash (exact), else taken
from the `sesflow-topic` tag (sanitised by the sender), else left empty.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

import msgspec

from sesflow.common.connection import Redis, redis_errors
from sesflow.common.keys import Keys, split_request_id
from sesflow.tracker.ses_events import Draft, Feedback


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
