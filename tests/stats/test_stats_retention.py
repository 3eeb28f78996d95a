"""STATS_RETENTION: the counters, series and index entry of a topic idle for longer than the
retention are deleted by the stats upkeep; active topics are kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from sesflow.common import scripts
from sesflow.common.connection import ensure_group
from sesflow.common.errors import ConfigError
from sesflow.common.keys import STATS_GROUP, Keys
from sesflow.common.schema import Event
from sesflow.common.settings import Settings, settings_from_mapping
from sesflow.stats.aggregate import StatsAggregator

from support.statskit import add_events

DAY_MS = 86_400_000


async def test_topics_idle_longer_than_the_retention_are_forgotten(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(STATS_RETENTION="60")
    keys = Keys()
    p = keys.partition(0)
    consumer = StatsAggregator(redis, settings)
    now = time.time()
    now_ms = int(now * 1000)
    for topic, last in (("old", now_ms - 61_000), ("older", now_ms - 400 * DAY_MS)):
        await redis.hset(p.stats_topic(topic), mapping={"sent": 3})
        await redis.hset(p.stats_series(topic), mapping={"sent:1": 3})
        await redis.zadd(p.stats_topics, {topic: last})
    # A topic counted through the consumer itself, just now: kept.
    await ensure_group(redis, p.events, STATS_GROUP)
    await add_events(redis, keys, Event(type="sent", topic="fresh", ts=now_ms))
    batch = await consumer.read_batch(p, ">", 10, None)
    assert await consumer.apply(p, batch)

    assert await consumer.forget_idle_topics(p, now) == 2
    assert await redis.zrange(p.stats_topics, 0, -1) == ["fresh"]
    for topic in ("old", "older"):
        assert await redis.exists(p.stats_topic(topic), p.stats_series(topic)) == 0
    assert await redis.hget(p.stats_topic("fresh"), "sent") == "1"
    assert await redis.exists(p.stats_series("fresh")) == 1
    assert await consumer.forget_idle_topics(p, now) == 0


async def test_many_idle_topics_go_in_batches(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    consumer = StatsAggregator(redis, make_settings(STATS_RETENTION="60"))
    p = Keys().partition(0)
    old = int(time.time() * 1000) - 120_000
    await redis.zadd(p.stats_topics, {f"t{n}": old for n in range(1234)})
    for n in range(0, 1234, 100):
        await redis.hset(p.stats_topic(f"t{n}"), "sent", 1)
    assert await consumer.forget_idle_topics(p) == 1234
    assert await redis.zcard(p.stats_topics) == 0
    assert not await redis.keys(p.stats_topic("*"))


async def test_forget_topics_lua_rechecks_the_last_activity(redis: Any) -> None:
    """A topic counted between the listing and the script is kept."""
    script = scripts.register(redis, "forget_topics")
    p = Keys().partition(0)
    await redis.zadd(p.stats_topics, {"a": 100, "b": 500})
    await redis.hset(p.stats_topic("a"), "sent", 1)
    await redis.hset(p.stats_topic("b"), "sent", 1)
    await redis.hset(p.stats_series("a"), "sent:1", 1)
    keys = [p.stats_topics]
    for topic in ("a", "b", "unknown"):
        keys += [p.stats_topic(topic), p.stats_series(topic)]
    assert await script(keys=keys, args=[200, "a", "b", "unknown"]) == 1
    assert await redis.zrange(p.stats_topics, 0, -1) == ["b"]
    assert await redis.exists(p.stats_topic("a"), p.stats_series("a")) == 0
    assert await redis.exists(p.stats_topic("b")) == 1


def test_the_retention_defaults_to_400_days_and_must_be_positive() -> None:
    assert settings_from_mapping({}).stats_retention == 400 * 86_400
    with pytest.raises(ConfigError, match="STATS_RETENTION"):
        settings_from_mapping({"STATS_RETENTION": "0"})
