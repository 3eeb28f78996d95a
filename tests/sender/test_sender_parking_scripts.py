"""park.lua and unpark.lua on their own: a job is in exactly one place, `sends` (pending for its
consumer) or its scope's parked list, and comes back to where dispatch.lua would have put it."""

from __future__ import annotations

from typing import Any

from sesflow.common.connection import ensure_group
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.schema import Job, MessageContent
from sesflow.sender.parking import Parking, backlog_line

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
SCOPE = "configuration-set:held"


async def read_one(redis: Any, consumer: str) -> str:
    [[_, [(entry_id, _)]]] = await redis.xreadgroup(SENDERS_GROUP, consumer, {PART.sends: ">"}, 1)
    return str(entry_id)


async def store(redis: Any, msg_id: str, topic: str, **fields: Any) -> None:
    content = MessageContent(msg_id=msg_id, topic=topic, subject="s", html="h", **fields)
    await redis.hset(PART.message(msg_id), mapping=content.to_hash())


async def test_park_moves_only_an_entry_pending_for_this_consumer(redis: Any) -> None:
    await ensure_group(redis, PART.sends, SENDERS_GROUP)
    job = Job(msg_id="1-0", index=3, email="a@x.io", data='{"n":1}')
    await redis.xadd(PART.sends, job.fields())
    entry_id = await read_one(redis, "other")
    mine = Parking(redis, KEYS, "me")
    assert not await mine.park(PART, entry_id, job, SCOPE)  # not pending for "me": untouched
    assert await redis.llen(PART.parked(SCOPE)) == 0
    assert (await redis.xpending(PART.sends, SENDERS_GROUP))["pending"] == 1

    assert await Parking(redis, KEYS, "other").park(PART, entry_id, job, SCOPE)
    assert (await redis.xpending(PART.sends, SENDERS_GROUP))["pending"] == 0
    assert await redis.lrange(PART.parked(SCOPE), 0, -1) == ["1-0\t3\ta@x.io\t" + '{"n":1}']
    assert await redis.smembers(PART.parked_scopes) == {SCOPE}


async def test_unpark_puts_each_job_where_dispatch_would_have(redis: Any) -> None:
    await store(redis, "1-0", "news", weight=2.0)
    await store(redis, "2-0", "receipts", lane="transactional")
    await store(redis, "3-0", "paused-topic")
    await redis.hset(PART.paused, "paused-topic", '{"reason":"manual","at":1}')
    await redis.zadd(PART.backlog_topics, {"busy": 5.0})
    jobs = [
        Job(msg_id="1-0", index=0, email="a@x.io"),
        Job(msg_id="2-0", index=0, email="b@x.io"),
        Job(msg_id="3-0", index=0, email="c@x.io"),
        Job(msg_id="9-0", index=0, email="d@x.io"),  # content gone
    ]
    await redis.rpush(PART.parked(SCOPE), *(backlog_line(j) for j in jobs))
    await redis.sadd(PART.parked_scopes, SCOPE)

    assert await Parking(redis, KEYS, "me").unpark(SCOPE) == 4
    assert await redis.lrange(PART.backlog("news"), 0, -1) == ["1-0\t0\ta@x.io"]
    assert await redis.zscore(PART.backlog_topics, "news") == 5.0  # joins at the lowest vtime
    assert await redis.hget(PART.backlog_weights, "news") == "2.0"
    assert await redis.lrange(PART.backlog("paused-topic"), 0, -1) == ["3-0\t0\tc@x.io"]
    assert await redis.zscore(PART.backlog_topics, "paused-topic") is None  # still paused
    assert await redis.lrange(PART.transactional, 0, -1) == ["2-0\t0\tb@x.io", "9-0\t0\td@x.io"]
    assert await redis.exists(PART.parked(SCOPE)) == 0
    assert await redis.smembers(PART.parked_scopes) == set()


async def test_unpark_goes_in_chunks_and_unpark_lifted_leaves_paused_scopes(redis: Any) -> None:
    await store(redis, "1-0", "news")
    lines = [backlog_line(Job(msg_id="1-0", index=n, email=f"r{n}@x.io")) for n in range(2500)]
    await redis.rpush(PART.parked(SCOPE), *lines)
    await redis.rpush(PART.parked("tenant:acme"), lines[0])
    await redis.sadd(PART.parked_scopes, SCOPE, "tenant:acme")
    parking = Parking(redis, KEYS, "me")
    await parking.unpark_lifted({"tenant:acme"})
    assert await redis.lrange(PART.backlog("news"), 0, -1) == lines
    assert await redis.smembers(PART.parked_scopes) == {"tenant:acme"}
    assert await redis.llen(PART.parked("tenant:acme")) == 1
