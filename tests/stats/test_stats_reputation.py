"""The reputation guard against a real redis-server: the stats consumer applies feedback events,
and a topic (or all bulk sending) whose figures reach the limits is paused once, with its
backlog kept, an event, a metric and a warning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from structlog.testing import capture_logs

from sesflow.common.connection import ensure_group
from sesflow.common.keys import SENDERS_GROUP, STATS_GROUP, Keys, PartitionKeys
from sesflow.common.pauses import ALL_BULK, Pauses
from sesflow.common.schema import Event, EventType, decode_event
from sesflow.common.sentry import init_sentry
from sesflow.common.settings import Settings
from sesflow.sender.pump import Pump
from sesflow.stats.guard import Trip
from sesflow.stats.metrics import GUARD_TRIPS
from sesflow.stats.reputation import ReputationGuard

from support.statskit import FAST, add_events, aggregator, counters, drained, running

NOW_MS = int(time.time() * 1000)
OBSERVER = "test-observer"


def sent(topic: str, count: int, first: int = 0) -> list[Event]:
    return [Event(type="sent", topic=topic, ts=NOW_MS, index=first + i) for i in range(count)]


def hard_bounces(topic: str, count: int, first: int = 0) -> list[Event]:
    return [
        Event(type="bounced", topic=topic, ts=NOW_MS, index=first + i, bounce_type="Permanent")
        for i in range(count)
    ]


def trips(reason: str) -> float:
    for metric in GUARD_TRIPS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["reason"] == reason:
                return sample.value
    return 0.0


async def apply(settings: Settings, redis: Any, events: list[Event], partition: int = 0) -> None:
    """Count `events`, then the guard's own events (written after the batch that tripped)."""
    keys = Keys(settings.redis_prefix, settings.send_partitions)
    for p in keys.partitions:  # a group that reads nothing: stats' upkeep trims no event away
        await ensure_group(redis, p.events, OBSERVER)
    await add_events(redis, keys, *events, partition=partition)
    for _ in range(3):  # a trip's event may land after a drained stream: count it in a round
        async with running(aggregator(settings)):
            await drained(redis, keys)
        if await all_counted(redis, keys):
            return
    raise AssertionError("events were still coming after three rounds")


async def all_counted(redis: Any, keys: Keys) -> bool:
    for p in keys.partitions:
        last = await redis.xrevrange(p.events, count=1)
        groups = await redis.xinfo_groups(p.events) if last else []
        stats = [g for g in groups if g["name"] == STATS_GROUP]
        if last and not (stats and stats[0]["last-delivered-id"] == last[0][0]):
            return False
    return True


async def guard_events(redis: Any, keys: Keys) -> list[Event]:
    found = []
    for p in keys.partitions:
        for _, fields in await redis.xrange(p.events):
            event = decode_event(fields["e"])
            if event.type == EventType.GUARD_TRIPPED:
                found.append(event)
    return found


async def backlog(redis: Any, p: PartitionKeys, topic: str, count: int) -> None:
    """A bulk topic's waiting recipients, as dispatch.lua leaves them."""
    await redis.rpush(p.backlog(topic), *[f"1-0\t{n}\t{topic}{n}@x.io" for n in range(count)])
    await redis.zadd(p.backlog_topics, {topic: 0}, nx=True)


@pytest.fixture
def fast(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**FAST)


async def test_hard_bounces_reaching_the_rate_pause_the_topic_once(
    redis: Any, fast: Settings
) -> None:
    keys = Keys()
    p = keys.partition(0)
    await ensure_group(redis, p.sends, SENDERS_GROUP)
    await backlog(redis, p, "news", 50)
    before = trips("bounce_rate")
    with capture_logs() as logs:
        # (Clean mail of another topic keeps the account under its own limit.)
        await apply(
            fast, redis, [*sent("clean", 200), *sent("news", 100), *hard_bounces("news", 5)]
        )

    pause = await Pauses(redis, keys).get("news")
    assert pause is not None and pause.reason == "bounce_rate", pause
    assert pause.figures == {
        "sent": 100,
        "bounced_hard": 5,
        "complained": 0,
        "rate": 0.05,
        "threshold": 0.05,
        "min_sent": 100,
    }
    # Its recipients keep their place; the pump moves none of them.
    assert await redis.llen(p.backlog("news")) == 50
    assert await Pump(fast, redis, keys).top_up() == 0
    assert await redis.xlen(p.sends) == 0

    [event] = await guard_events(redis, keys)
    assert event.topic == "news" and event.ts == pause.at
    assert event.detail == "bounce_rate: 5 hard bounces of 100 sent (5.00%, limit 5.00%)"
    assert (await counters(redis, p.stats_global))["guard_tripped"] == 1
    assert trips("bounce_rate") == before + 1
    [warning] = [line for line in logs if line["event"].startswith("reputation guard tripped")]
    assert warning["log_level"] == "warning" and warning["topic"] == "news"
    assert warning["reason"] == "bounce_rate" and warning["bounced_hard"] == 5

    # More bounces while paused: the pause and its figures stay, nothing is reported again.
    await apply(fast, redis, hard_bounces("news", 10, first=5))
    assert await Pauses(redis, keys).get("news") == pause
    assert len(await guard_events(redis, keys)) == 1
    assert trips("bounce_rate") == before + 1


async def test_below_the_rate_or_the_minimum_nothing_pauses(redis: Any, fast: Settings) -> None:
    keys = Keys()
    await apply(fast, redis, [*sent("clean", 1000), *sent("ok", 100), *hard_bounces("ok", 4)])
    await apply(fast, redis, [*sent("young", 99), *hard_bounces("young", 20)])
    assert await Pauses(redis, keys).all() == {}
    assert await guard_events(redis, keys) == []


async def test_a_topic_that_reaches_the_minimum_with_its_bounces_in_trips(
    redis: Any, fast: Settings
) -> None:
    keys = Keys()
    await apply(fast, redis, [*sent("slow", 60), *hard_bounces("slow", 8)])
    assert await Pauses(redis, keys).get("slow") is None
    await apply(fast, redis, sent("slow", 40, first=60))
    pause = await Pauses(redis, keys).get("slow")
    assert pause is not None and pause.reason == "bounce_rate"
    assert pause.figures["bounced_hard"] == 8 and pause.figures["sent"] == 100


async def test_complaints_pause_after_their_own_minimum(redis: Any, fast: Settings) -> None:
    keys = Keys()
    await apply(fast, redis, sent("loud", 1000))
    complaint = Event(type="complained", topic="loud", ts=NOW_MS, index=1)
    await apply(fast, redis, [complaint])
    pause = await Pauses(redis, keys).get("loud")
    assert pause is not None and pause.reason == "complaint_rate"
    assert pause.figures["complained"] == 1 and pause.figures["rate"] == 0.001


async def test_ses_own_list_and_not_spam_leave_the_guard_alone(redis: Any, fast: Settings) -> None:
    """Refusals from SES's own suppression list and not-spam reports, far over both limits:
    counted apart, no pause, and the guard's fields do not move."""
    keys = Keys()
    await apply(fast, redis, sent("listed", 1000))
    refused = [
        Event(
            type="bounced",
            topic="listed",
            ts=NOW_MS,
            index=i,
            bounce_type="Permanent",
            bounce_subtype="OnAccountSuppressionList",
        )
        for i in range(200)
    ]
    fans = [
        Event(type="complained", topic="listed", ts=NOW_MS, index=i, detail="not-spam")
        for i in range(50)
    ]
    await apply(fast, redis, [*refused, *fans])
    assert await Pauses(redis, keys).get("listed") is None
    assert await Pauses(redis, keys).get(ALL_BULK) is None
    topic = await counters(redis, keys.partition(0).stats_topic("listed"))
    assert topic == {"sent": 1000, "bounced_suppressed": 200, "complained_not_spam": 50}


async def test_a_topic_is_judged_on_every_partition_together(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    """Sent in one partition, bounced in the other: neither alone reaches the minimum."""
    settings = make_settings(SEND_PARTITIONS="2", **FAST)
    keys = Keys(partitions=2)
    await apply(settings, redis, sent("split", 100), partition=0)
    assert await Pauses(redis, keys).get("split") is None
    await apply(settings, redis, hard_bounces("split", 5), partition=1)
    pause = await Pauses(redis, keys).get("split")
    assert pause is not None and pause.reason == "bounce_rate"
    assert pause.figures["sent"] == 100 and pause.figures["bounced_hard"] == 5
    for p in keys.partitions:  # every partition holds the pause its pump obeys
        assert await redis.hexists(p.paused, "split")


async def test_a_manual_pause_keeps_its_reason_and_nothing_is_reported(
    redis: Any, fast: Settings
) -> None:
    keys = Keys()
    pauses = Pauses(redis, keys)
    manual, _ = await pauses.pause("held", "manual")
    before = trips("bounce_rate")
    await apply(fast, redis, [*sent("clean", 1000), *sent("held", 100), *hard_bounces("held", 50)])
    assert await pauses.get("held") == manual
    assert await guard_events(redis, keys) == []
    assert trips("bounce_rate") == before


async def test_guard_off_pauses_nothing(redis: Any, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(GUARD="off", **FAST)
    await apply(settings, redis, [*sent("wild", 100), *hard_bounces("wild", 100)])
    assert await Pauses(redis, Keys()).all() == {}


async def test_a_resumed_topic_still_over_its_limit_pauses_again_at_its_next_bounce(
    redis: Any, fast: Settings
) -> None:
    keys = Keys()
    pauses = Pauses(redis, keys)
    await apply(fast, redis, [*sent("again", 100), *hard_bounces("again", 5)])
    assert await pauses.resume("again")
    await apply(fast, redis, hard_bounces("again", 1, first=5))
    pause = await pauses.get("again")
    assert pause is not None and pause.reason == "bounce_rate"
    assert pause.figures["bounced_hard"] == 6
    assert len(await guard_events(redis, keys)) == 2


async def test_the_account_trip_pauses_all_bulk_and_transactional_mail_goes_on(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    """20 topics under the topic minimum, 10% hard bounces together: above the account's 8%."""
    fast = make_settings(STATS_BATCH_SIZE="5000", **FAST)  # one batch: exact figures
    keys = Keys()
    p = keys.partition(0)
    await ensure_group(redis, p.sends, SENDERS_GROUP)
    await backlog(redis, p, "bulk", 30)
    await redis.rpush(p.transactional, *[f"9-0\t{n}\ttx{n}@x.io" for n in range(5)])
    events = []
    for t in range(20):
        events += [*sent(f"small-{t}", 50), *hard_bounces(f"small-{t}", 5)]
    before = trips("bounce_rate")
    await apply(fast, redis, events)

    pauses = await Pauses(redis, keys).all()
    assert set(pauses) == {ALL_BULK}, pauses  # no topic reached its own minimum
    account = pauses[ALL_BULK]
    assert account.reason == "bounce_rate"
    assert account.figures["sent"] == 1000 and account.figures["bounced_hard"] == 100
    assert account.figures["threshold"] == 0.08
    [event] = await guard_events(redis, keys)
    assert event.topic == "" and event.detail.startswith("bounce_rate: 100 hard bounces")
    assert trips("bounce_rate") == before + 1

    assert await Pump(fast, redis, keys).top_up() == 5
    jobs = [fields for _, fields in await redis.xrange(p.sends)]
    assert [job["e"] for job in jobs] == [f"tx{n}@x.io" for n in range(5)]
    assert await redis.llen(p.backlog("bulk")) == 30


async def test_the_account_window_counts_the_last_day_only(redis: Any, fast: Settings) -> None:
    """Yesterday's bounces are out of the window: today's clean mail does not trip."""
    keys = Keys()
    old = NOW_MS - 30 * 3600 * 1000
    events = [Event(type="sent", topic=f"old-{i}", ts=old) for i in range(90)]
    events += [
        Event(type="bounced", topic=f"old-{i}", ts=old, bounce_type="Permanent") for i in range(90)
    ]
    events += sent("today", 100)
    events += hard_bounces("today", 1)
    await apply(fast, redis, events)
    assert await Pauses(redis, keys).get(ALL_BULK) is None


class Captured(Transport):
    """Keeps every Sentry envelope in memory instead of sending it."""

    envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        Captured.envelopes.append(envelope)


async def test_a_trip_sends_a_sentry_warning_with_the_figures(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SENTRY_DSN="https://public0123456789@o1.ingest.sentry.example/42")
    Captured.envelopes = []
    init_sentry(settings, "stats", transport=Captured)
    try:
        guard = ReputationGuard(settings, redis, Keys())
        figures = {"sent": 200.0, "bounced_hard": 12.0, "complained": 0.0, "rate": 0.06}
        trip = Trip("bounce_rate", {**figures, "threshold": 0.05, "min_sent": 100.0})
        assert await guard.trip(Keys().partition(0), "news", trip)
        assert not await guard.trip(Keys().partition(0), "news", trip)  # paused already
        sentry_sdk.flush(timeout=5)
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
    [envelope] = Captured.envelopes
    [item] = envelope.items
    event = item.get_event()
    assert event is not None and event["level"] == "warning"
    assert event["message"] == (
        "Reputation guard paused topic 'news': "
        "bounce_rate: 12 hard bounces of 200 sent (6.00%, limit 5.00%)"
    )
    extra: Any = event["extra"]
    assert extra["topic"] == "news" and extra["figures"]["bounced_hard"] == 12
