"""pump.lua and pause.lua against a real redis-server: the bulk backlogs reach `sends` a little
at a time, fairly between topics, never while paused, and never crowded out by transactional
mail beyond its share."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sesflow.common import scripts
from sesflow.common.connection import ensure_group
from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys
from sesflow.common.pauses import ALL_BULK, Pauses

from support.until import until

KEYS = Keys()
P = KEYS.partition(0)
TARGET = 20
LIVE_MS = 5000


@pytest.fixture
async def group(redis: Any) -> None:
    await ensure_group(redis, P.sends, SENDERS_GROUP)


async def backlog(redis: Any, topic: str, count: int, msg_id: str = "1-0", first: int = 0) -> None:
    """What dispatch.lua leaves for a bulk message due now: lines, and the topic in the pump's
    set at the lowest virtual time present."""
    lines = [f"{msg_id}\t{first + n}\t{topic}{first + n}@x.io" for n in range(count)]
    await redis.rpush(P.backlog(topic), *lines)
    head = await redis.zrange(P.backlog_topics, 0, 0, withscores=True)
    if not await redis.hexists(P.paused, topic):
        await redis.zadd(P.backlog_topics, {topic: head[0][1] if head else 0}, nx=True)


async def pump(redis: Any, p: PartitionKeys = P, target: int = TARGET, share: float = 0.8) -> int:
    script = scripts.register(redis, "pump")
    moved, _, _ = await script(
        keys=p.pump_keys(),
        args=[SENDERS_GROUP, target, 10, f"{p.prefix}backlog:", share, LIVE_MS],
    )
    return int(moved)


async def deliver(redis: Any, count: int = 1000, ack: bool = True) -> list[dict[str, str]]:
    """What a sender reads now (advances the group's last-delivered ID) and, with `ack`, has
    sent (acknowledged) by the next pump."""
    reply = await redis.xreadgroup(SENDERS_GROUP, "c", {P.sends: ">"}, count=count)
    entries = [entry for _stream, batch in reply or [] for entry in batch]
    if ack and entries:
        await redis.xack(P.sends, SENDERS_GROUP, *(entry_id for entry_id, _ in entries))
    return [fields for _id, fields in entries]


def topic_of(job: dict[str, str]) -> str:
    return job["e"].rstrip("0123456789@x.io")


async def run(redis: Any, rounds: int) -> Counter[str]:
    """`rounds` times: pump, then senders take everything delivered."""
    sent: Counter[str] = Counter()
    for _ in range(rounds):
        await pump(redis)
        sent.update(topic_of(job) for job in await deliver(redis))
    return sent


async def test_the_pump_keeps_sends_only_target_deep(redis: Any, group: None) -> None:
    await backlog(redis, "big", 100)
    assert await pump(redis) == TARGET
    assert await pump(redis) == 0  # nothing delivered since: nothing missing
    assert len(await deliver(redis, count=5)) == 5
    assert await pump(redis) == 5
    assert await redis.xlen(P.sends) == TARGET + 5
    assert await redis.llen(P.backlog("big")) == 100 - TARGET - 5


async def test_jobs_the_live_senders_hold_count_and_a_dead_senders_do_not(
    redis: Any, group: None
) -> None:
    await backlog(redis, "big", 100)
    assert await pump(redis) == TARGET
    assert len(await deliver(redis, count=15, ack=False)) == 15  # held, not sent yet
    assert await pump(redis) == 0  # 5 undelivered + 15 held = the target
    await deliver(redis, ack=True)  # the other 5, sent
    assert await pump(redis) == 5
    # The holder goes silent (a dead sender): its 15 wait for reclaim, not the pump.
    await asyncio.sleep(0.25)
    script = scripts.register(redis, "pump")
    moved, out, room = await script(
        keys=P.pump_keys(), args=[SENDERS_GROUP, TARGET, 10, f"{P.prefix}backlog:", 0.8, 200]
    )
    assert (moved, out, room) == (15, 5, 0)


async def test_the_pump_says_whether_the_senders_keep_up(redis: Any, group: None) -> None:
    """Room left after a call: the backlogs ran out first (new mail should move soon); none
    left: the senders hold all they should (room comes as they record)."""
    script = scripts.register(redis, "pump")
    args = [SENDERS_GROUP, TARGET, 10, f"{P.prefix}backlog:", 0.8, LIVE_MS]
    await backlog(redis, "small", 5)
    assert await script(keys=P.pump_keys(), args=args) == [5, 0, TARGET - 5]
    await backlog(redis, "big", 100)
    assert await script(keys=P.pump_keys(), args=args) == [TARGET - 5, 5, 0]
    assert await script(keys=P.pump_keys(), args=args) == [0, TARGET, 0]


async def test_jobs_come_out_exactly_as_dispatch_would_queue_them(redis: Any, group: None) -> None:
    await redis.rpush(P.backlog("t"), "7-0\t0\ta@x.io", '7-0\t1\tb@x.io\t{"name":"B"}')
    await redis.zadd(P.backlog_topics, {"t": 0})
    assert await pump(redis) == 2
    assert await deliver(redis) == [
        {"m": "7-0", "i": "0", "e": "a@x.io"},
        {"m": "7-0", "i": "1", "e": "b@x.io", "d": '{"name":"B"}'},
    ]
    # An empty backlog leaves the pump's set and its weight.
    assert await redis.zcard(P.backlog_topics) == 0 and not await redis.exists(P.backlog("t"))


async def test_topics_sending_at_the_same_time_share_equally(redis: Any, group: None) -> None:
    await backlog(redis, "big", 1000)
    await backlog(redis, "small", 100, msg_id="2-0")
    sent = await run(redis, 10)
    assert sum(sent.values()) == 200
    assert abs(sent["big"] - sent["small"]) <= 10  # one quantum
    sent = await run(redis, 10)
    assert sent["small"] == 0 and sent["big"] == 200  # the small one is done


async def test_weights_share_in_proportion(redis: Any, group: None) -> None:
    await backlog(redis, "heavy", 1000)
    await backlog(redis, "light", 1000, msg_id="2-0")
    await redis.hset(P.backlog_weights, "heavy", "3")
    sent = await run(redis, 20)
    assert 2.5 <= sent["heavy"] / sent["light"] <= 3.5


async def test_a_topic_joining_late_gets_its_share_from_then_on_not_a_burst(
    redis: Any, group: None
) -> None:
    await backlog(redis, "old", 1000)
    await run(redis, 10)  # "old" alone: its virtual time is far ahead of 0
    await backlog(redis, "new", 1000, msg_id="2-0")
    sent = await run(redis, 10)
    assert abs(sent["old"] - sent["new"]) <= 10


async def test_a_paused_topic_keeps_its_place_and_resume_gives_it_its_share(
    redis: Any, group: None
) -> None:
    pauses = Pauses(redis, KEYS)
    await backlog(redis, "a", 100)
    await backlog(redis, "b", 100, msg_id="2-0")
    pause, made = await pauses.pause("a", "manual")
    assert made and pause.reason == "manual"
    again, made = await pauses.pause("a", "bounce_rate")
    assert not made and again == pause  # the first reason stays
    await backlog(redis, "a", 10, first=100)  # dispatched while paused: waits too
    sent = await run(redis, 5)
    assert sent == Counter({"b": 100})
    assert await redis.llen(P.backlog("a")) == 110
    assert await pauses.resume("a")
    assert await pauses.get("a") is None
    sent = await run(redis, 10)
    assert sent == Counter({"a": 110})


async def test_pausing_all_bulk_stops_the_pump_until_resume(redis: Any, group: None) -> None:
    pauses = Pauses(redis, KEYS)
    await backlog(redis, "a", 50)
    await pauses.pause(ALL_BULK, "manual")
    assert await pump(redis) == 0
    assert set(await pauses.all()) == {ALL_BULK}
    await pauses.resume(ALL_BULK)
    assert await pump(redis) == TARGET


async def transactional(redis: Any, count: int, first: int = 0) -> None:
    """What dispatch.lua leaves for a transactional message due now."""
    lines = [f"9-0\t{first + n}\ttx{first + n}@x.io" for n in range(count)]
    await redis.rpush(P.transactional, *lines)


async def test_transactional_mail_goes_first(redis: Any, group: None) -> None:
    await backlog(redis, "bulk", 100)
    await transactional(redis, 3)
    assert await pump(redis) == TARGET
    jobs = await deliver(redis)
    assert [j["e"] for j in jobs[:3]] == ["tx0@x.io", "tx1@x.io", "tx2@x.io"]
    assert all(j.get("l") == "t" for j in jobs[:3]) and "l" not in jobs[3]
    assert topic_of(jobs[3]) == "bulk"


async def test_a_transactional_flood_takes_at_most_its_share_while_bulk_waits(
    redis: Any, group: None
) -> None:
    await backlog(redis, "bulk", 1000)
    await transactional(redis, 1000)
    sent: Counter[str] = Counter()
    for _ in range(10):
        await pump(redis, share=0.8)
        sent.update("tx" if j.get("l") else "bulk" for j in await deliver(redis))
    assert sent == Counter({"tx": 160, "bulk": 40})  # 80% of each window of 20


async def test_transactional_mail_takes_everything_when_no_bulk_waits(
    redis: Any, group: None
) -> None:
    await transactional(redis, 100)
    assert await pump(redis, share=0.8) == TARGET
    pauses = Pauses(redis, KEYS)
    await backlog(redis, "bulk", 100)
    await pauses.pause(ALL_BULK, "manual")  # paused bulk is not waiting
    await deliver(redis)
    assert await pump(redis, share=0.8) == TARGET
    assert all(j.get("l") == "t" for j in await deliver(redis))


def _pump(redis: Any, rate: str = "100") -> Any:
    from sesflow.common.settings import settings_from_mapping
    from sesflow.sender.pump import Pump

    settings = settings_from_mapping(
        {"EMAIL_RATE": rate, "TRACKING_SECRET": "pump-test-secret-0123456789abcdef"}
    )
    return Pump(settings, redis, KEYS)


async def test_a_pump_that_keeps_up_calls_again_soon_and_a_full_one_waits(
    redis: Any, group: None
) -> None:
    """After a top-up the loop waits brisk while mail moves and room is left, busy while the
    senders hold all they should (with or without mail moved), idle when there is nothing to
    move."""
    from sesflow.sender.pump import BRISK_INTERVAL_S, BUSY_INTERVAL_S, IDLE_INTERVAL_S, target_depth

    pump_ = _pump(redis)
    assert await pump_.top_up() == 0
    assert pump_.interval[P.index] == IDLE_INTERVAL_S
    await backlog(redis, "small", 3)
    assert await pump_.top_up() == 3
    assert pump_.interval[P.index] == BRISK_INTERVAL_S
    await backlog(redis, "big", 1000)
    assert await pump_.top_up() >= target_depth(pump_.settings, 0.0) - 3  # now full
    assert pump_.interval[P.index] == BUSY_INTERVAL_S
    assert await pump_.top_up() == 0
    assert pump_.interval[P.index] == BUSY_INTERVAL_S


def test_flat_entries_read_back_pump_luas_reply() -> None:
    from sesflow.sender.pump import flat_entries

    reply = [5, 0, 15, "1-0", 4, "m", "a", "i", "0", "2-0", 0, "3-0", 2, "e", ""]
    assert flat_entries(reply, 3) == [
        ("1-0", {"m": "a", "i": "0"}),
        ("2-0", {}),
        ("3-0", {"e": ""}),
    ]
    assert flat_entries(reply[:3], 3) == []


async def test_a_reader_tops_up_and_reads_in_one_call(redis: Any, group: None) -> None:
    """With a consumer name the call reads for it after the top-up, at most the count asked
    for; what the reader holds still counts toward the depth."""
    from sesflow.sender.pump import flat_entries

    await backlog(redis, "big", 100)
    script = scripts.register(redis, "pump")
    args = [SENDERS_GROUP, TARGET, 10, f"{P.prefix}backlog:", 0.8, LIVE_MS, "1", 1]
    reply = await script(keys=P.pump_keys(), args=[*args, "reader", 7])
    assert reply[:3] == [TARGET, 0, 0]
    entries = flat_entries(reply, 3)
    assert [(fields or {})["e"] for _, fields in entries] == [f"big{n}@x.io" for n in range(7)]
    pending = await redis.xpending(P.sends, SENDERS_GROUP)
    assert pending["pending"] == 7 and pending["consumers"] == [{"name": "reader", "pending": 7}]

    reply = await script(keys=P.pump_keys(), args=[*args, "reader", 100])
    assert reply[:3] == [0, TARGET, 0]  # 13 undelivered + 7 held: nothing missing
    assert [(fields or {})["e"] for _, fields in flat_entries(reply, 3)] == [
        f"big{n}@x.io" for n in range(7, TARGET)
    ]


async def test_while_a_reader_tops_up_the_pump_loop_makes_no_call_of_its_own(
    redis: Any, group: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read that moves mail pushes the loop's next call back a whole interval; once the
    reads stop, the loop tops up again within its interval."""
    from sesflow.sender import pump as pump_module

    for name in ("BUSY_INTERVAL_S", "BRISK_INTERVAL_S", "IDLE_INTERVAL_S"):
        monkeypatch.setattr(pump_module, name, 0.4)  # reads 0.05 s apart stay well within it
    pump_ = _pump(redis)
    calls: list[str] = []
    real = pump_._call

    async def spy(part: PartitionKeys, *read: str | int) -> Any:
        calls.append("read" if read else "loop")
        return await real(part, *read)

    monkeypatch.setattr(pump_, "_call", spy)
    await backlog(redis, "big", 1000)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(pump_.run(stop))
    try:
        await until(lambda: asyncio.sleep(0, list(calls)), lambda c: c == ["loop"], within=5)
        for _ in range(10):
            for entry_id, _fields in await pump_.read(P, "reader", 5):
                await redis.xack(P.sends, SENDERS_GROUP, entry_id)  # sent: room again
            await asyncio.sleep(0.05)
        assert calls.count("loop") == 1 and calls.count("read") == 10
        await until(lambda: asyncio.sleep(0, calls.count("loop")), lambda n: n >= 2, within=5)
        pump_.put_off(60.0)
        await asyncio.sleep(0.01)
    finally:
        stop.set()
    await asyncio.wait_for(loop_task, 1.0)  # stop ends a long wait at once


async def test_a_read_that_moves_nothing_leaves_the_loops_schedule(redis: Any, group: None) -> None:
    """While mail trickles in, a reader reads after each job; its empty top-ups must not keep
    the loop's next call an idle interval away (a new job would wait for it)."""
    pump_ = _pump(redis)
    pump_.put_off(10.0, P)
    due = pump_.due[P.index]
    await pump_.read(P, "reader", 5)  # nothing to move
    assert pump_.due[P.index] == due
    await backlog(redis, "small", 3)
    assert len(await pump_.read(P, "reader", 5)) == 3
    assert pump_.due[P.index] < due  # it moved mail: the loop's call is an interval away


async def test_a_reader_whose_top_up_fails_still_reads(
    redis: Any,
    group: None,
    make_sender: Callable[..., Any],
    sender_settings: Callable[..., Any],
) -> None:
    """A top-up that fails in Redis (here a key of the wrong type) must not stop the reads:
    the reader reads `sends` without it and tries the top-up again later."""
    sender = make_sender(sender_settings())
    await redis.set(P.backlog_topics, "not a sorted set")
    entry_id = await redis.xadd(P.sends, {"m": "1-0", "i": "0", "e": "a@x.io"})
    assert sender.pump.read_tops_up(P)
    assert [e for e, _ in await sender.read_new(P, 10)] == [entry_id]
    assert not sender.pump.read_tops_up(P)  # put off


async def test_a_fast_reader_tops_up_about_as_often_as_the_loop_would(
    redis: Any, group: None
) -> None:
    """A read tops the partition up only once half its interval has passed since the last
    top-up: unthrottled, a reader reads every few ms, and each top-up counts the undelivered
    entries up to the whole depth."""
    from sesflow.sender.pump import BRISK_INTERVAL_S

    pump_ = _pump(redis)
    assert pump_.read_tops_up(P)  # never topped up
    await backlog(redis, "small", 3)
    await pump_.read(P, "reader", 5)  # moved all 3, room left: the brisk interval
    assert not pump_.read_tops_up(P)
    await asyncio.sleep(BRISK_INTERVAL_S / 2 + 0.005)
    assert pump_.read_tops_up(P)
