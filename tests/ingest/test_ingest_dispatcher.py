"""The dispatcher against a real redis-server: jobs, idempotency, dead letters, upkeep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as syncredis

from sesflow.common.connection import ensure_group
from sesflow.common.consumer import consumer_client
from sesflow.common.keys import DISPATCH_GROUP, Keys, PartitionKeys
from sesflow.common.producer import enqueue, enqueue_sync
from sesflow.common.schema import MessageRequest, encode
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList, entry
from sesflow.ingest import dispatcher as dispatcher_module
from sesflow.ingest.dispatcher import Dispatcher

from support.ingestkit import queued, read_events, read_jobs
from support.until import until


@pytest.fixture
async def dclient(settings: Settings) -> AsyncIterator[Any]:
    client = consumer_client(settings)
    yield client
    await client.aclose()


@pytest.fixture
async def dispatcher(dclient: Any, settings: Settings, keys: Keys) -> Dispatcher:
    await ensure_group(dclient, keys.requests, DISPATCH_GROUP)
    return Dispatcher(dclient, settings, keys, consumer="test")


def message(emails: list[str], topic: str = "news", **kw: Any) -> MessageRequest:
    return MessageRequest(topic_id=topic, emails=emails, subject="Hi", content="<p>x</p>", **kw)


async def read_one(dispatcher: Dispatcher) -> tuple[str, dict[str, str]]:
    reply = await dispatcher.client.xreadgroup(
        DISPATCH_GROUP, "test", {dispatcher.keys.requests: ">"}, count=1
    )
    entry_id, fields = reply[0][1][0]
    return entry_id, fields


async def pending(client: Any, keys: Keys) -> int:
    return int((await client.xpending(keys.requests, DISPATCH_GROUP))["pending"])


async def test_one_job_per_recipient_over_several_chunks(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    emails = [f"user{n}@example.com" for n in range(2500)]
    msg_id = await enqueue(redis, keys, message([*emails, "USER7@example.com"]))
    await dispatcher.handle(*await read_one(dispatcher))
    jobs = await read_jobs(redis, p)
    assert [(j["m"], int(j["i"]), j["e"]) for j in jobs] == [
        (msg_id, n, e) for n, e in enumerate(emails)
    ]
    # content stored once, under the message id
    assert await redis.keys(f"{p.tag}:msg:*") == [p.message(msg_id)]
    stored = await redis.hgetall(p.message(msg_id))
    assert (stored["total"], stored["dispatched"], stored["html"]) == ("2500", "2500", "<p>x</p>")
    events = await read_events(redis, p)
    assert [(e.type, e.n) for e in events] == [("accepted", 2500)]
    assert await pending(redis, keys) == 0


async def test_redelivery_does_not_duplicate_jobs(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    await enqueue(redis, keys, message(["a@x.io", "b@x.io"]))
    entry_id, fields = await read_one(dispatcher)
    await dispatcher.handle(entry_id, fields)
    await dispatcher.handle(entry_id, fields)  # the same entry again
    assert len(await read_jobs(redis, p)) == 2
    assert [e.type for e in await read_events(redis, p)] == ["accepted"]


async def test_a_crash_between_chunks_resumes_where_it_stopped(
    dispatcher: Dispatcher,
    redis: Any,
    keys: Keys,
    p: PartitionKeys,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
) -> None:
    monkeypatch.setattr(dispatcher_module, "CHUNK", 3)
    emails = [f"u{n}@x.io" for n in range(10)]
    await enqueue(redis, keys, message(emails))
    entry_id, fields = await read_one(dispatcher)
    real, calls = dispatcher.script, 0

    async def crash_on_third_call(**kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("simulated crash")
        return await real(**kw)

    monkeypatch.setattr(dispatcher, "script", crash_on_third_call)
    with pytest.raises(ConnectionError):
        await dispatcher.handle(entry_id, fields)
    assert len(await read_jobs(redis, p)) == 6
    assert await pending(redis, keys) == 1  # not acknowledged

    other = Dispatcher(dispatcher.client, settings, keys, consumer="other")
    assert await other.reclaim(keys.requests, min_idle_ms=0) == 1
    await other.drain()
    jobs = await read_jobs(redis, p)
    assert sorted(int(j["i"]) for j in jobs) == list(range(10))
    assert [(e.type, e.n) for e in await read_events(redis, p)] == [("accepted", 10)]
    assert await pending(redis, keys) == 0


async def test_scheduled_message_goes_to_the_schedule_in_chunks(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    emails = [f"u{n}@x.io" for n in range(1200)]
    msg_id = await enqueue(redis, keys, message(emails, scheduled_at="2999-01-01 00:00:00"))
    await dispatcher.handle(*await read_one(dispatcher))
    assert await queued(redis, p) == 0
    members = await redis.zrange(p.schedule, 0, -1)
    assert sorted(members) == sorted(f"{msg_id}:{n}" for n in (0, 500, 1000))
    assert len((await redis.hget(p.schedule_data, f"{msg_id}:1000")).split("\n")) == 200


async def test_suppressed_and_invalid_recipients_are_counted(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    await SuppressionList(redis, keys).add(entry("B@x.io", "complaint"))
    await enqueue(redis, keys, message(["a@x.io", "b@x.io", "not-an-address", "c@x.io"]))
    await dispatcher.handle(*await read_one(dispatcher))
    jobs = await read_jobs(redis, p)
    assert [(j["i"], j["e"]) for j in jobs] == [("0", "a@x.io"), ("2", "c@x.io")]
    events = {e.type: e for e in await read_events(redis, p)}
    assert events["accepted"].n == 3
    assert events["suppressed"].n == 1
    assert events["rejected"].n == 1
    assert "not-an-address" in events["rejected"].detail


async def test_list_unsubscribes_drop_bulk_recipients_of_that_list_only(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    """A producer's entry names its list (or gets its topic's); bulk mail skips the addresses
    that left it, transactional mail skips only global suppressions."""
    suppressions = SuppressionList(redis, keys)
    await suppressions.unsubscribe("left@x.io", "newsletter")
    await suppressions.add(entry("bounced@x.io", "bounce"))
    emails = ["left@x.io", "bounced@x.io", "stays@x.io"]
    ids = []
    for request in (
        message(emails, mailing_list="newsletter"),
        message(emails, mailing_list="offers"),
        message(emails, topic="newsletter"),  # the topic's list
        message(emails, mailing_list="newsletter", lane="transactional"),
    ):
        ids.append(await enqueue(redis, keys, request))
        await dispatcher.handle(*await read_one(dispatcher))
    by_message: dict[str, list[str]] = {msg_id: [] for msg_id in ids}
    for job in await read_jobs(redis, p):
        by_message[job["m"]].append(job["e"])
    assert [sorted(by_message[msg_id]) for msg_id in ids] == [
        ["stays@x.io"],
        ["left@x.io", "stays@x.io"],
        ["stays@x.io"],
        ["left@x.io", "stays@x.io"],
    ]
    stored = [await redis.hget(p.message(m), "list") for m in ids]
    assert stored == ["newsletter", "offers", "newsletter", "newsletter"]


async def test_an_entry_with_a_bad_list_is_dead_lettered(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    await enqueue(redis, keys, message(["a@x.io"], mailing_list="not a token"))
    await dispatcher.handle(*await read_one(dispatcher))
    assert await queued(redis, p) == 0
    [(_, fields)] = await redis.xrange(keys.requests_dead)
    assert fields["reason"] == "invalid_list"


async def test_a_message_accepted_before_a_cancel_is_stopped(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    await enqueue(redis, keys, message(["a@x.io", "b@x.io"]))
    await redis.set(p.stop("news"), int(time.time() * 1000) + 1)
    await dispatcher.handle(*await read_one(dispatcher))
    assert await queued(redis, p) == 0
    assert [(e.type, e.n) for e in await read_events(redis, p)] == [
        ("accepted", 2),
        ("stopped", 2),
    ]


POISON: list[dict[str, Any]] = [
    {"other": "field"},
    {"message": "{not json"},
    {"message": '{"topic_id": 5, "emails": "x", "subject": "s", "content": "c"}'},
    {"message": b"\xff\xfe\x00binary"},
    {"message": '{"topic_id": "t", "emails": [], "subject": "s", "content": "c"}'},
    {"message": '{"topic_id": "t", "emails": ["bad", "worse"], "subject": "s", "content": "c"}'},
    {
        "message": '{"topic_id": "t", "emails": ["a@x.io"], "subject": "s", "content": "c",'
        ' "scheduled_at": "someday"}'
    },
    {"message": "[]"},
]


async def test_poison_entries_are_dead_lettered_and_the_loop_goes_on(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys, settings: Settings
) -> None:
    raw: Any = syncredis.Redis.from_url(settings.redis_url)  # bytes in, bytes out
    try:
        poison_ids = [raw.xadd(keys.requests, fields).decode() for fields in POISON]
        good = enqueue_sync(raw, keys, message(["a@x.io", "b@x.io"]))
    finally:
        raw.close()
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:

        async def handled() -> tuple[int, int]:
            return await queued(redis, p), await redis.xlen(keys.requests_dead)

        await until(handled, lambda lengths: lengths == (2, 8), what="2 jobs and 8 dead letters")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert await queued(redis, p) == 2
    assert await pending(redis, keys) == 0

    raw = syncredis.Redis.from_url(settings.redis_url)
    try:
        dead = {f[b"id"].decode(): f for _, f in raw.xrange(keys.requests_dead)}
    finally:
        raw.close()
    assert sorted(dead) == sorted(poison_ids)
    reasons = [dead[i][b"reason"].decode() for i in poison_ids]
    assert reasons == [
        "missing_field",
        "invalid_json",
        "invalid_type",
        "invalid_encoding",
        "no_recipients",
        "invalid_addresses",
        "invalid_schedule",
        "invalid_type",
    ]
    assert dead[poison_ids[3]][b"message"] == b"\xff\xfe\x00binary"  # kept byte for byte
    assert all(dead[i][b"detail"] for i in poison_ids)
    rejected = [e for e in await read_events(redis, p) if e.type == "rejected"]
    assert sorted(e.msg_id for e in rejected) == sorted(poison_ids)
    assert {e.msg_id: e.n for e in rejected}[poison_ids[5]] == 2
    assert good not in dead


async def test_trim_never_removes_entries_still_pending(
    dispatcher: Dispatcher, redis: Any, keys: Keys
) -> None:
    ids = [await enqueue(redis, keys, message(["a@x.io"])) for _ in range(6)]
    reply = await redis.xreadgroup(DISPATCH_GROUP, "c", {keys.requests: ">"}, count=4)
    delivered = [entry_id for entry_id, _ in reply[0][1]]
    await redis.xack(keys.requests, DISPATCH_GROUP, delivered[0], delivered[2], delivered[3])
    assert await dispatcher.trim(keys.requests) == 1  # ids[0]: ids[1] is still pending
    remaining = [entry_id for entry_id, _ in await redis.xrange(keys.requests)]
    assert remaining == ids[1:]


async def test_trim_without_a_group_does_nothing(
    redis: Any, dclient: Any, keys: Keys, settings: Settings
) -> None:
    assert await Dispatcher(dclient, settings, keys).trim(keys.requests) == 0
    await enqueue(redis, keys, message(["a@x.io"]))
    assert await Dispatcher(dclient, settings, keys).trim(keys.requests) == 0
    assert await redis.xlen(keys.requests) == 1


async def test_the_loop_survives_redis_being_unreachable(make_settings: Any, keys: Keys) -> None:
    from sesflow.cli.embedded import free_port

    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", SHUTDOWN_GRACE=1)
    client = consumer_client(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(client, settings, keys).run(stop))
    await asyncio.sleep(0.5)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)
    await client.aclose()


async def test_producer_entry_is_the_documented_format(redis: Any, keys: Keys) -> None:
    msg = message(["a@x.io"], track_clicks=True)
    msg_id = await enqueue(redis, keys, msg)
    [(entry_id, fields)] = await redis.xrange(keys.requests)
    assert entry_id == msg_id
    assert fields == {"message": encode(msg).decode()}


async def test_a_refused_write_is_retried_not_dead_lettered(
    dispatcher: Dispatcher,
    redis: Any,
    keys: Keys,
    p: PartitionKeys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OOM under noeviction (or a failover's READONLY) says "not now": the entry stays pending
    for a later try instead of being dead-lettered and counted rejected."""
    from redis.exceptions import ResponseError

    from sesflow.common.errors import RedisUnavailable

    await enqueue(redis, keys, message(["a@x.io"]))
    entry_id, fields = await read_one(dispatcher)

    async def refused(**kw: Any) -> Any:
        raise ResponseError("OOM command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr(dispatcher, "script", refused)
    with pytest.raises(RedisUnavailable):
        await dispatcher.handle(entry_id, fields)
    assert await pending(redis, keys) == 1
    assert await redis.xlen(keys.requests_dead) == 0
    assert [e.type for e in await read_events(redis, p)] == []
