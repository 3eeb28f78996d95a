"""The reputation guard, applied as stats aggregates: a topic, or all bulk sending, pauses itself
when its feedback reaches the limits of `stats.guard`.

No extra round trip per event. The reads the guard needs ride at the end of each batch's
script call (`read_in`), after the batch's own increments, so they see the counters with the
batch applied: the pauses in force, the sent / hard bounces / complaints of the topics the batch
moved on one of those fields, and (when the batch moved one of them at all) the account's hourly
buckets of the window. A topic's counters are spread over the partitions of its messages, so
with several partitions the same fields of the other partitions come in one pipelined read per
batch, only for the topics not paused already (a paused topic is not judged).

A trip is `Pauses.pause` (the first reason stays), then, only from the call that made the pause:
a `guard_tripped` event, `sesflow_guard_trips_total{reason}`, a warning log line and a Sentry
message, each with the figures. A paused topic is not judged again, so a pause trips once; a
topic resumed while still over its limits pauses again at its next feedback. A failure here is
logged and never stops counting: the batch is applied already, and the next batch that moves
the topic judges it again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sesflow.common import sentry
from sesflow.common.keys import Keys, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.pauses import ALL_BULK, Pauses
from sesflow.common.schema import Event, EventType, event_fields
from sesflow.common.settings import Settings
from sesflow.stats.counters import PartitionBatch
from sesflow.stats.guard import (
    FIELDS,
    Figures,
    Limits,
    Trip,
    hourly_fields,
    judge,
    sum_hourly,
    window_hours,
)
from sesflow.stats.metrics import GUARD_TRIPS

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Reads:
    """What `read_in` queued: its replies are the last `count` of the batch's reply."""

    topics: tuple[str, ...] = ()
    hours: tuple[str, ...] = ()  # the account's window; empty: no account check
    count: int = 0


def _moved(counts: Counter[str]) -> bool:
    return any(counts[name] > 0 for name in FIELDS)


def _ints(values: Iterable[Any]) -> list[int]:
    return [int(v) if v else 0 for v in values]


def describe(trip: Trip) -> str:
    f = trip.figures
    what = "hard bounces" if trip.reason == "bounce_rate" else "complaints"
    count = f["bounced_hard"] if trip.reason == "bounce_rate" else f["complained"]
    return (
        f"{trip.reason}: {count:.0f} {what} of {f['sent']:.0f} sent "
        f"({f['rate']:.2%}, limit {f['threshold']:.2%})"
    )


class ReputationGuard:
    def __init__(self, settings: Settings, client: Any, keys: Keys) -> None:
        self.enabled = settings.guard == "on"
        self.topic_limits = Limits.for_topics(settings)
        self.account_limits = Limits.for_account(settings)
        self.client = client
        self.keys = keys
        self.pauses = Pauses(client, keys)
        self._tripping = asyncio.Lock()  # partitions' loops: one trip at a time per process

    def read_in(
        self, tx: Any, p: PartitionKeys, batch: PartitionBatch, now: float | None = None
    ) -> Reads:
        """Queue the guard's reads at the end of the batch's transaction `tx`."""
        if not self.enabled:
            return Reads()
        topics = tuple(topic for topic, counts in batch.topics.items() if _moved(counts))
        hours = (
            tuple(window_hours(time.time() if now is None else now))
            if _moved(batch.global_)
            else ()
        )
        if not topics and not hours:
            return Reads()
        tx.hmget(p.paused, [ALL_BULK, *topics])
        for topic in topics:
            tx.hmget(p.stats_topic(topic), list(FIELDS))
        if hours:
            tx.hmget(p.stats_hourly, hourly_fields(list(hours)))
        return Reads(topics, hours, 1 + len(topics) + (1 if hours else 0))

    async def check(self, p: PartitionKeys, reads: Reads, replies: list[Any]) -> None:
        """Judge what `read_in` read (the end of the batch's reply) and pause what trips."""
        if not reads.count:
            return
        try:
            await self._check(p, reads, replies[-reads.count :])
        except Exception:  # counting goes on; the next batch that moves the topic retries
            log.exception("reputation guard failed", partition=p.index)

    async def _check(self, p: PartitionKeys, reads: Reads, replies: list[Any]) -> None:
        paused = replies[0]
        counted = replies[1 : 1 + len(reads.topics)]
        topics = {
            topic: Figures.of(_ints(values))
            for topic, values, pause in zip(reads.topics, counted, paused[1:], strict=True)
            if pause is None
        }
        account = None
        if reads.hours and paused[0] is None:
            account = sum_hourly(_ints(replies[-1]), len(reads.hours))
        if len(self.keys.partitions) > 1 and (topics or account is not None):
            account = await self._add_other_partitions(p, topics, account, list(reads.hours))
        for topic, figures in topics.items():
            trip = judge(figures, self.topic_limits)
            if trip is not None:
                await self.trip(p, topic, trip)
        if account is not None:
            trip = judge(account, self.account_limits)
            if trip is not None:
                await self.trip(p, ALL_BULK, trip)

    async def _add_other_partitions(
        self,
        p: PartitionKeys,
        topics: dict[str, Figures],
        account: Figures | None,
        hours: list[str],
    ) -> Figures | None:
        """Add the other partitions' figures (one pipelined read); returns the account's."""
        others = [q for q in self.keys.partitions if q.index != p.index]
        pipe = self.client.pipeline(transaction=False)
        for q in others:
            for topic in topics:
                pipe.hmget(q.stats_topic(topic), list(FIELDS))
            if account is not None:
                pipe.hmget(q.stats_hourly, hourly_fields(hours))
        replies = iter(await pipe.execute())
        for _ in others:
            for topic in topics:
                topics[topic] += Figures.of(_ints(next(replies)))
            if account is not None:
                account += sum_hourly(_ints(next(replies)), len(hours))
        return account

    async def trip(self, p: PartitionKeys, topic: str, trip: Trip) -> bool:
        """Pause `topic` (ALL_BULK: every bulk topic) and report it; False when a pause was
        in force already (it is kept, and reported by whoever made it)."""
        async with self._tripping:
            pause, made = await self.pauses.pause(topic, trip.reason, trip.figures)
        if not made:
            return False
        detail = describe(trip)
        scope = "account" if topic == ALL_BULK else "topic"
        GUARD_TRIPS.labels(trip.reason).inc()
        log.warning(
            "reputation guard tripped: bulk sending paused until resumed",
            scope=scope,
            topic=topic,
            reason=trip.reason,
            **trip.figures,
        )
        what = "all bulk sending" if topic == ALL_BULK else f"topic {topic!r}"
        sentry.report(
            message=f"Reputation guard paused {what}: {detail}",
            level="warning",
            scope=scope,
            topic=topic,
            reason=trip.reason,
            figures=trip.figures,
        )
        event = Event(type=EventType.GUARD_TRIPPED, ts=pause.at, topic=topic, detail=detail)
        await self.client.xadd(p.events, event_fields(event))
        return True
