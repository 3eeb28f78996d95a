from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from sesflow.common.keys import STATS_GROUP, Keys
from sesflow.common.schema import Event, EventType, event_fields
from sesflow.common.scripts import register
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import DEAD_LETTER_FIELDS, CountsCall, StatsAggregator
from sesflow.stats.counters import RECENT_S, hour_of

from support.statskit import FAST, add_events, aggregator, counters, drained, running
from support.until import until

NOW_MS = int(time.time() * 1000)


def every_type(topic: str) -> list[Event]:
    events = [Event(type=t.value, topic=topic, ts=NOW_MS, n=2) for t in EventType]
    events += [
        Event(type="bounced", topic=topic, ts=NOW_MS, bounce_type="Permanent"),
        Event(type="bounced", topic=topic, ts=NOW_MS, bounce_type="Transient"),
        Event(type="opened", topic=topic, ts=NOW_MS, unique=True),
        Event(type="clicked", topic=topic, ts=NOW_MS, unique=True),
    ]
    return events


@pytest.fixture
def fast(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**FAST)


async def test_every_event_type_lands_in_its_counter(redis: Any, fast: Settings) -> None:
    keys = Keys()
    p = keys.partition(0)
    await add_events(redis, keys, *every_type("news"))
    async with running(aggregator(fast)) as consumer:
        await drained(redis, keys)
    topic = await counters(redis, p.stats_topic("news"))
    expected = {t.value: 2 for t in EventType}
    expected.update(bounced=4, opened=3, clicked=3)
    # the plain bounce (no bounce_type) counts as soft, like Undetermined
    expected.update(bounced_hard=1, bounced_soft=3, opened_unique=1, clicked_unique=1)
    expected.update(failed=0)  # the 2 `requeued` (dlq replay) take the 2 failures back
    assert topic == expected
    assert await counters(redis, p.stats_global) == expected
    hourly = await counters(redis, p.stats_hourly)
    assert hourly[f"sent:{hour_of(NOW_MS / 1000)}"] == 2
    minutely = await counters(redis, p.stats_minutely)
    assert minutely[f"bounced_hard:{NOW_MS // 60_000}"] == 1
    series = await counters(redis, p.stats_series("news"))
    assert series[f"sent:{NOW_MS // 60_000}"] == 2
    assert 0 < await redis.ttl(p.stats_series("news")) <= 49 * 3600
    assert await redis.zscore(p.stats_topics, "news") == NOW_MS
    # `sent` per second of its event time, for the live rate (all topics, and per topic)
    second = NOW_MS // 1000
    for key in (p.stats_seconds(second // 60), p.stats_seconds(second // 60, "news")):
        assert await counters(redis, key) == {str(second): 2}
        assert 0 < await redis.ttl(key) <= RECENT_S + 120
    assert consumer.metrics.batches >= 1


async def test_batches_respect_the_batch_size(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    keys = Keys()
    await add_events(redis, keys, *[Event(type="sent", topic="t") for _ in range(25)])
    async with running(aggregator(make_settings(STATS_BATCH_SIZE="10", **FAST))) as consumer:
        await drained(redis, keys)
    assert consumer.metrics.batches == 3
    assert (await counters(redis, keys.partition(0).stats_topic("t")))["sent"] == 25


async def test_read_but_not_applied_is_counted_once_by_another_consumer(
    redis: Any, fast: Settings
) -> None:
    """A consumer crashes after XREADGROUP and before EXEC: its entries stay pending, a
    surviving consumer claims them after the idle time and counts them exactly once."""
    keys = Keys()
    p = keys.partition(0)
    await add_events(redis, keys, *[Event(type="sent", topic="t") for _ in range(5)])
    crashed = StatsAggregator(redis, fast, consumer="crashed")
    await redis.xgroup_create(p.events, STATS_GROUP, id="0", mkstream=True)
    batch = await crashed.read_batch(p, ">", 100, None)
    assert len(batch) == 5  # read, never applied: the process "died" here
    assert (await redis.xpending(p.events, STATS_GROUP))["pending"] == 5
    assert await redis.hgetall(p.stats_topic("t")) == {}

    async with running(aggregator(fast, consumer="survivor")) as survivor:
        await drained(redis, keys)
    assert (await counters(redis, p.stats_topic("t")))["sent"] == 5
    assert survivor.metrics.claimed == 5


async def test_restart_with_same_name_reads_its_own_pending_first(
    redis: Any, fast: Settings
) -> None:
    keys = Keys()
    p = keys.partition(0)
    await add_events(redis, keys, *[Event(type="delivered", topic="t") for _ in range(3)])
    await redis.xgroup_create(p.events, STATS_GROUP, id="0", mkstream=True)
    first = StatsAggregator(redis, fast, consumer="stats-a")
    await first.read_batch(p, ">", 2, None)  # 2 read and lost
    async with running(aggregator(fast, consumer="stats-a")):
        await drained(redis, keys)
    assert (await counters(redis, p.stats_topic("t")))["delivered"] == 3


async def test_applied_batch_is_never_applied_again(redis: Any, fast: Settings) -> None:
    """The batch's script ran but its reply was lost (the connection dropped): the consumer
    drops the batch in memory and re-reads its pending list, which no longer holds those
    entries."""
    keys = Keys()
    p = keys.partition(0)
    await add_events(redis, keys, *[Event(type="sent", topic="t") for _ in range(4)])
    consumer = aggregator(fast)
    real_apply = consumer._apply
    lost = {"replies": 0}

    async def apply(**kwargs: Any) -> Any:
        result = await real_apply(**kwargs)
        if lost["replies"] == 0:
            lost["replies"] += 1
            raise RedisConnectionError("connection lost after the script ran")
        return result

    consumer._apply = apply  # type: ignore[assignment]
    async with running(consumer):
        await drained(redis, keys)
        await add_events(redis, keys, Event(type="sent", topic="t"))
        await drained(redis, keys)
    assert lost["replies"] == 1 and consumer.metrics.redis_reconnects == 1
    assert (await counters(redis, p.stats_topic("t")))["sent"] == 5
    per_second = 0
    for minute in {int(time.time()) // 60 - 1, int(time.time()) // 60}:
        per_second += sum((await counters(redis, p.stats_seconds(minute, "t"))).values())
    assert per_second == 5  # the per-second counts too: once each


async def test_stale_batch_is_dropped_not_applied(redis: Any, fast: Settings) -> None:
    keys = Keys()
    p = keys.partition(0)
    await add_events(redis, keys, Event(type="sent", topic="t"))
    await redis.xgroup_create(p.events, STATS_GROUP, id="0", mkstream=True)
    consumer = StatsAggregator(redis, fast, consumer="slow")
    batch = await consumer.read_batch(p, ">", 10, None)
    batch.first_read -= consumer.claim_idle  # held too long: someone may have claimed it
    assert await consumer.apply(p, batch) is False
    assert await redis.hgetall(p.stats_topic("t")) == {}
    assert consumer._backlog[0] is True


async def test_malformed_entries_are_dead_lettered_and_the_loop_goes_on(
    redis: Any, fast: Settings
) -> None:
    keys = Keys()
    p = keys.partition(0)
    await redis.xadd(p.events, {"e": "{broken"})
    await redis.xadd(p.events, {"other": "x"})
    await redis.xadd(p.events, {"e": '{"type": "nonsense"}'})
    await redis.xadd(p.events, {"e": '{"type": "sent", "ts": 99999999999999999}'})
    await add_events(redis, keys, Event(type="sent", topic="t"))
    async with running(aggregator(fast)) as consumer:
        await drained(redis, keys)
    dead = await redis.xrange(p.events_dead)
    assert [d[1]["reason"].split(":")[0] for d in dead] == [
        "undecodable event",
        "no 'e' field",
        "unknown event type 'nonsense'",
        "timestamp out of range ts=99999999999999999",
    ]
    assert dead[0][1]["e"] == "{broken" and dead[1][1]["other"] == "x"
    assert (await counters(redis, p.stats_topic("t")))["sent"] == 1
    assert consumer.metrics.dead_lettered == 4


async def test_an_entry_that_is_not_utf8_is_dead_lettered_as_it_was(
    redis: Any, fast: Settings
) -> None:
    """Bytes that are not UTF-8 once made every XREADGROUP reply of the partition fail, so
    nothing more was counted there; now the entry is a dead letter like any other."""
    keys = Keys()
    p = keys.partition(0)
    raw: Any = aioredis.Redis.from_url(fast.redis_url)  # bytes in, bytes out
    poison = {b"e": b'{"type":"sent","topic":"\xff\xfe"}'}
    await raw.xadd(p.events, poison)
    await add_events(redis, keys, Event(type="sent", topic="t"))
    async with running(aggregator(fast)):
        await drained(redis, keys)
    ((_, dead),) = await raw.xrange(p.events_dead)
    await raw.aclose()
    assert dead[b"e"] == poison[b"e"]
    assert dead[b"reason"].startswith(b"event is not UTF-8")
    assert (await counters(redis, p.stats_topic("t")))["sent"] == 1


async def test_an_entry_of_thousands_of_fields_is_dead_lettered_and_counting_goes_on(
    redis: Any, fast: Settings
) -> None:
    """A poison entry with 5,000 fields: its dead letter keeps the first DEAD_LETTER_FIELDS and
    says how many it dropped (a script unpacks XADD's arguments on Lua's stack, which holds
    8,000); the batch around it is counted."""
    keys = Keys()
    p = keys.partition(0)
    await redis.xadd(p.events, {f"f{n}": "x" for n in range(5000)})
    await add_events(redis, keys, Event(type="sent", topic="t"))
    async with running(aggregator(fast)) as consumer:
        await drained(redis, keys)
    ((_, dead),) = await redis.xrange(p.events_dead)
    assert dead["reason"] == "no 'e' field"
    assert dead["f0"] == "x" and f"f{DEAD_LETTER_FIELDS - 1}" in dead
    assert f"f{DEAD_LETTER_FIELDS}" not in dead
    assert dead["dropped_fields"] == str(5000 - DEAD_LETTER_FIELDS)
    assert (await counters(redis, p.stats_topic("t")))["sent"] == 1
    assert consumer.metrics.dead_lettered == 1


async def test_the_batch_script_reads_beyond_what_lua_can_unpack_at_once(redis: Any) -> None:
    """The guard may read thousands of fields in one batch (the pause of every topic it moved):
    the script reads them in slices, in order."""
    p = Keys().partition(0)
    await redis.hset(p.stats_topic("t"), mapping={"f0": 1, "f8999": 7})
    call = CountsCall(p)
    call.hmget(p.stats_topic("t"), [f"f{n}" for n in range(9000)])
    [values] = await register(redis, "apply_counts")(keys=call.keys, args=call.args(STATS_GROUP))
    assert len(values) == 9000
    assert values[0] == "1" and values[8999] == "7" and values[1:8999] == [None] * 8998


async def test_partitions_are_counted_separately_and_summed(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SEND_PARTITIONS="3", **FAST)
    keys = Keys(partitions=3)
    for n in range(3):
        await add_events(redis, keys, Event(type="sent", topic="t", n=n + 1), partition=n)
    async with running(aggregator(settings)):
        await drained(redis, keys)
    assert [
        (await counters(redis, keys.partition(n).stats_topic("t")))["sent"] for n in range(3)
    ] == [1, 2, 3]


async def test_stop_flushes_the_batch_in_hand(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    keys = Keys()
    async with running(
        aggregator(
            make_settings(STATS_FLUSH_INTERVAL="30", RECLAIM_IDLE="120", SHUTDOWN_GRACE="40")
        )
    ):
        await asyncio.sleep(0.1)
        await add_events(redis, keys, *[Event(type="sent", topic="t") for _ in range(3)])
        await until(  # read into the batch, far from its 30 s flush
            lambda: redis.xpending(keys.partition(0).events, STATS_GROUP),
            lambda pending: pending["pending"] == 3,
            what="stats to read the three events",
        )
        assert await redis.hgetall(keys.partition(0).stats_topic("t")) == {}
    assert (await counters(redis, keys.partition(0).stats_topic("t")))["sent"] == 3


async def test_trim_never_removes_pending_entries(redis: Any, fast: Settings) -> None:
    keys = Keys()
    p = keys.partition(0)
    ids = await add_events(redis, keys, *[Event(type="sent") for _ in range(6)])
    await redis.xgroup_create(p.events, STATS_GROUP, id="0", mkstream=True)
    consumer = StatsAggregator(redis, fast, consumer="c")
    batch = await consumer.read_batch(p, ">", 2, None)
    await consumer.apply(p, batch)  # ids 0,1 acknowledged
    await consumer.read_batch(p, ">", 2, None)  # ids 2,3 pending
    assert await consumer.trim(p.events) == 2
    assert [e[0] for e in await redis.xrange(p.events)] == ids[2:]


async def test_prune_drops_old_buckets_only(redis: Any, fast: Settings) -> None:
    keys = Keys()
    p = keys.partition(0)
    now = time.time()
    old_hour, new_hour = hour_of(now - 40 * 86400), hour_of(now - 3600)
    old_min, new_min = int((now - 50 * 3600) // 60), int(now // 60)
    await redis.hset(p.stats_hourly, mapping={f"sent:{old_hour}": 1, f"sent:{new_hour}": 2})
    await redis.hset(p.stats_minutely, mapping={f"sent:{old_min}": 1, f"sent:{new_min}": 2})
    await redis.hset(p.stats_series("t"), mapping={f"sent:{old_min}": 1, f"sent:{new_min}": 2})
    await redis.zadd(p.stats_topics, {"t": int(now * 1000)})
    consumer = StatsAggregator(redis, fast)
    assert await consumer.prune(p, now) == 3
    assert await redis.hkeys(p.stats_hourly) == [f"sent:{new_hour}"]
    assert await redis.hkeys(p.stats_minutely) == [f"sent:{new_min}"]
    assert await redis.hkeys(p.stats_series("t")) == [f"sent:{new_min}"]


async def test_survives_a_redis_outage(
    redis: Any, redis_process: Any, make_settings: Callable[..., Settings]
) -> None:
    """Events written while the consumer cannot reach Redis are counted once it is back."""
    keys = Keys()
    # Reads block up to a second, so the connections are dropped while one is blocked: an idle
    # pooled connection would be replaced without an error, and no outage would be seen.
    settings = make_settings(**{**FAST, "STATS_FLUSH_INTERVAL": "1"})
    async with running(aggregator(settings)) as consumer:
        await add_events(redis, keys, Event(type="sent", topic="t"))
        await drained(redis, keys)
        await until(
            lambda: redis.client_list(),
            lambda clients: any(c["cmd"] == "xreadgroup" for c in clients),
            what="the consumer blocked in XREADGROUP",
        )
        await redis.client_kill_filter(_type="normal", skipme=True)  # drop every other connection
        await add_events(redis, keys, Event(type="sent", topic="t"))
        await drained(redis, keys)
    assert (await counters(redis, keys.partition(0).stats_topic("t")))["sent"] == 2
    assert consumer.metrics.redis_reconnects >= 1


async def test_a_batch_of_thousands_over_many_topics_and_buckets_counts_once(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    """One batch of 2,500 entries (its XACK goes in slices inside the script) spread over 50
    topics and 40 hours: every counter and bucket is added exactly once, nothing stays pending."""
    settings = make_settings(**{**FAST, "STATS_BATCH_SIZE": "2500", "STATS_FLUSH_INTERVAL": "5"})
    keys = Keys()
    p = keys.partition(0)
    events = [
        Event(type="delivered", topic=f"t{i % 50}", ts=NOW_MS - (i % 40) * 3_600_000)
        for i in range(2500)
    ]
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.xadd(p.events, event_fields(event))
    await pipe.execute()
    async with running(aggregator(settings)) as consumer:
        await drained(redis, keys, within=20)
    assert consumer.metrics.batches == 1
    assert (await counters(redis, p.stats_global))["delivered"] == 2500
    for n in range(50):
        assert (await counters(redis, p.stats_topic(f"t{n}")))["delivered"] == 50
    hourly = await counters(redis, p.stats_hourly)
    assert sum(v for k, v in hourly.items() if k.startswith("delivered:")) == 2500
    assert len([k for k in hourly if k.startswith("delivered:")]) == 40
    assert await redis.zcard(p.stats_topics) == 50
    assert (await redis.xpending(p.events, STATS_GROUP))["pending"] == 0
