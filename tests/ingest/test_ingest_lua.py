"""Each ingest Lua script on its own, against a real redis-server."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from sesflow.common import scripts
from sesflow.common.keys import Keys, PartitionKeys
from sesflow.common.schema import MessageContent

from support.ingestkit import queued, read_events, read_jobs

TOPIC = "news"
TTL_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def dispatch_args(  # noqa: PLR0913 (mirrors dispatch.lua's ARGV)
    msg_id: str,
    first: int,
    addresses: list[str],
    due_ms: int = 0,
    accepted: int = 0,
    rejected: int = 0,
    schedule_chunk: int = 500,
    data: list[str] | None = None,
    content: MessageContent | None = None,
) -> list[Any]:
    """dispatch.lua's arguments; `data` is each recipient's own merge data ("" = none)."""
    if content is None:
        content = MessageContent(msg_id=msg_id, topic=TOPIC, subject="Hello", html="<p>hi</p>")
    pairs = [part for pair in content.to_hash().items() for part in pair] if first == 0 else []
    own = data if data is not None else [""] * len(addresses)
    return [
        msg_id,
        first,
        due_ms,
        TTL_MS,
        TOPIC,
        accepted or len(addresses),
        rejected,
        "invalid addresses: x" if rejected else "",
        schedule_chunk,
        len(pairs) // 2,
        *pairs,
        *[part for pair in zip(addresses, own, strict=True) for part in pair],
    ]


async def dispatch(redis: Any, p: PartitionKeys, msg_id: str, first: int, **kw: Any) -> list[Any]:
    script = scripts.register(redis, "dispatch")
    result: list[Any] = await script(
        keys=p.dispatch_keys(msg_id, TOPIC), args=dispatch_args(msg_id, first, **kw)
    )
    return result


# --- dispatch.lua -------------------------------------------------------------------------------


async def test_dispatch_queues_one_job_per_recipient_and_stores_content(
    redis: Any, p: PartitionKeys
) -> None:
    msg_id = f"{now_ms()}-0"
    result = await dispatch(redis, p, msg_id, 0, addresses=["a@x.io", "b@x.io", "c@x.io"])
    assert result == [3, "queued"]
    jobs = await read_jobs(redis, p)
    assert jobs == [{"m": msg_id, "i": str(n), "e": f"{c}@x.io"} for n, c in enumerate("abc")]
    content = MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id)))
    assert (content.topic, content.subject, content.html) == (TOPIC, "Hello", "<p>hi</p>")
    assert content.total == 3
    assert content.accepted_ms == int(msg_id.split("-")[0])
    assert 0 < await redis.pttl(p.message(msg_id)) <= TTL_MS
    events = await read_events(redis, p)
    assert [(e.type, e.n, e.msg_id, e.topic) for e in events] == [("accepted", 3, msg_id, TOPIC)]


async def test_dispatch_is_a_no_op_when_the_chunk_was_done(redis: Any, p: PartitionKeys) -> None:
    msg_id = f"{now_ms()}-0"
    await dispatch(redis, p, msg_id, 0, addresses=["a@x.io", "b@x.io"], accepted=4)
    assert await dispatch(redis, p, msg_id, 0, addresses=["a@x.io", "b@x.io"]) == [2, "skipped"]
    # a later chunk called out of order only learns where to resume
    assert await dispatch(redis, p, msg_id, 3, addresses=["d@x.io"]) == [2, "skipped"]
    assert await dispatch(redis, p, msg_id, 2, addresses=["c@x.io", "d@x.io"]) == [4, "queued"]
    jobs = await read_jobs(redis, p)
    assert [j["i"] for j in jobs] == ["0", "1", "2", "3"]
    assert [e.type for e in await read_events(redis, p)] == ["accepted"]
    assert await redis.hget(p.message(msg_id), "total") == "4"


async def test_dispatch_skips_suppressed_recipients_keeping_indexes(
    redis: Any, p: PartitionKeys
) -> None:
    msg_id = f"{now_ms()}-0"
    result = await dispatch(redis, p, msg_id, 0, addresses=["a@x.io", "", "c@x.io"], rejected=2)
    assert result == [3, "queued"]
    assert [(j["i"], j["e"]) for j in await read_jobs(redis, p)] == [
        ("0", "a@x.io"),
        ("2", "c@x.io"),
    ]
    events = await read_events(redis, p)
    assert [(e.type, e.n) for e in events] == [("accepted", 3), ("rejected", 2), ("suppressed", 1)]
    assert events[1].detail == "invalid addresses: x"
    assert await redis.hget(p.message(msg_id), "total") == "2"


async def test_dispatch_schedules_future_messages_in_chunks(redis: Any, p: PartitionKeys) -> None:
    msg_id = f"{now_ms()}-0"
    due = now_ms() + 60_000
    addresses = ["a@x.io", "b@x.io", "", "", "e@x.io"]
    result = await dispatch(redis, p, msg_id, 0, addresses=addresses, due_ms=due, schedule_chunk=2)
    assert result == [5, "scheduled"]
    assert await queued(redis, p) == 0
    # the all-suppressed chunk at index 2 is not stored
    members = [f"{msg_id}:0", f"{msg_id}:4"]
    assert await redis.zrange(p.schedule, 0, -1, withscores=True) == [(m, due) for m in members]
    assert await redis.hgetall(p.schedule_data) == {
        members[0]: "a@x.io\nb@x.io",
        members[1]: "e@x.io",
    }
    assert await redis.smembers(p.schedule_topic(TOPIC)) == set(members)
    # content and the topic set live until the due time plus the content TTL
    assert await redis.pttl(p.message(msg_id)) > TTL_MS + 50_000
    assert await redis.pttl(p.schedule_topic(TOPIC)) > TTL_MS + 50_000


async def test_dispatch_stops_messages_accepted_before_a_cancel(
    redis: Any, p: PartitionKeys
) -> None:
    msg_id = f"{now_ms() - 1000}-0"
    await redis.set(p.stop(TOPIC), now_ms())
    result = await dispatch(redis, p, msg_id, 0, addresses=["a@x.io", "", "c@x.io"])
    assert result == [3, "stopped"]
    assert await queued(redis, p) == 0
    events = await read_events(redis, p)
    assert [(e.type, e.n) for e in events] == [("accepted", 3), ("suppressed", 1), ("stopped", 2)]


async def test_dispatch_ignores_a_cancel_older_than_the_message(
    redis: Any, p: PartitionKeys
) -> None:
    await redis.set(p.stop(TOPIC), now_ms() - 5000)
    msg_id = f"{now_ms()}-0"
    assert await dispatch(redis, p, msg_id, 0, addresses=["a@x.io"]) == [1, "queued"]
    assert await queued(redis, p) == 1


async def test_dispatch_past_schedule_means_now(redis: Any, p: PartitionKeys) -> None:
    msg_id = f"{now_ms()}-0"
    result = await dispatch(redis, p, msg_id, 0, addresses=["a@x.io"], due_ms=now_ms() - 60_000)
    assert result == [1, "queued"]
    assert await redis.zcard(p.schedule) == 0


# --- promote.lua --------------------------------------------------------------------------------


async def promote(redis: Any, p: PartitionKeys, batch: int = 10) -> list[int]:
    script = scripts.register(redis, "promote")
    result: list[int] = await script(keys=p.promote_keys(), args=[batch, p.prefix])
    return result


async def test_promote_moves_only_due_chunks(redis: Any, p: PartitionKeys) -> None:
    await redis.zadd(p.schedule, {"1-0:0": now_ms() - 10, "2-0:500": now_ms() + 60_000})
    await redis.hset(p.schedule_data, mapping={"1-0:0": "a@x.io\n\nc@x.io", "2-0:500": "z@x.io"})
    assert await promote(redis, p) == [1, 2]
    jobs = await read_jobs(redis, p)
    assert jobs == [{"m": "1-0", "i": "0", "e": "a@x.io"}, {"m": "1-0", "i": "2", "e": "c@x.io"}]
    assert await redis.zrange(p.schedule, 0, -1) == ["2-0:500"]
    assert await redis.hkeys(p.schedule_data) == ["2-0:500"]
    assert await promote(redis, p) == [0, 0]


async def test_promote_moves_a_bounded_batch_per_call(redis: Any, p: PartitionKeys) -> None:
    due = now_ms() - 10
    members = {f"{n}-0:0": due for n in range(1, 6)}
    await redis.zadd(p.schedule, members)
    await redis.hset(p.schedule_data, mapping={m: "a@x.io" for m in members})
    assert await promote(redis, p, batch=2) == [2, 2]
    assert await promote(redis, p, batch=2) == [2, 2]
    assert await promote(redis, p, batch=2) == [1, 1]
    assert await queued(redis, p) == 5


async def test_promote_drops_a_member_without_data(redis: Any, p: PartitionKeys) -> None:
    await redis.zadd(p.schedule, {"1-0:0": now_ms() - 10})
    assert await promote(redis, p) == [1, 0]
    assert await redis.zcard(p.schedule) == 0


# --- cancel.lua ---------------------------------------------------------------------------------


async def cancel(redis: Any, p: PartitionKeys, stop_ms: int) -> int:
    script = scripts.register(redis, "cancel")
    return int(await script(keys=p.cancel_keys(TOPIC), args=[stop_ms, TOPIC, TTL_MS]))


async def test_cancel_removes_scheduled_chunks_accepted_before_the_stop(
    redis: Any, p: PartitionKeys
) -> None:
    stop = now_ms()
    before, after = f"{stop - 1000}-0", f"{stop + 1000}-0"
    due = stop + 60_000
    chunks = {f"{before}:0": "a@x.io\n\nc@x.io", f"{before}:3": "d@x.io", f"{after}:0": "z@x.io"}
    await redis.zadd(p.schedule, dict.fromkeys(chunks, due))
    await redis.hset(p.schedule_data, mapping=chunks)
    await redis.sadd(p.schedule_topic(TOPIC), *chunks, "999-0:0")  # the last one is stale
    assert await cancel(redis, p, stop) == 3
    assert await redis.zrange(p.schedule, 0, -1) == [f"{after}:0"]
    assert await redis.hkeys(p.schedule_data) == [f"{after}:0"]
    assert await redis.smembers(p.schedule_topic(TOPIC)) == {f"{after}:0"}
    assert await redis.get(p.stop(TOPIC)) == str(stop)
    assert 0 < await redis.pttl(p.stop(TOPIC)) <= TTL_MS
    events = await read_events(redis, p)
    assert [(e.type, e.n, e.topic) for e in events] == [("stopped", 3, TOPIC)]


async def test_cancel_keeps_the_latest_stop_time_and_is_repeatable(
    redis: Any, p: PartitionKeys
) -> None:
    stop = now_ms()
    assert await cancel(redis, p, stop) == 0
    assert await cancel(redis, p, stop - 5000) == 0
    assert await redis.get(p.stop(TOPIC)) == str(stop)
    assert await read_events(redis, p) == []  # nothing removed, nothing recorded


async def test_reject_once_records_the_event_once(redis: Any, p: PartitionKeys) -> None:
    script = scripts.register(redis, "reject_once")
    args = ["e", '{"type":"rejected","n":2}', 60_000]
    assert await script(keys=[p.message("1-0"), p.events], args=args) == 1
    assert await script(keys=[p.message("1-0"), p.events], args=args) == 0
    assert len(await read_events(redis, p)) == 1
    assert 0 < await redis.pttl(p.message("1-0")) <= 60_000


# --- merge data through dispatch.lua and promote.lua -------------------------------------------


async def test_dispatch_puts_each_recipients_data_on_their_job(
    redis: Any, p: PartitionKeys
) -> None:
    msg_id = f"{now_ms()}-0"
    content = MessageContent(
        msg_id=msg_id,
        topic=TOPIC,
        subject="Hi {{n}}",
        html="<p>{{n}}</p>",
        text="{{n}}",
        data='{"n":0}',
        reply_to=("r@x.io",),
        headers=(("X-A", "b"),),
        attachments='[{"filename":"a.pdf","content":"QQ==","content_type":"application/pdf"}]',
    )
    result = await dispatch(
        redis,
        p,
        msg_id,
        0,
        addresses=["a@x.io", "", "c@x.io"],
        data=['{"n":1}', '{"n":2}', ""],
        content=content,
    )
    assert result == [3, "queued"]
    assert await read_jobs(redis, p) == [
        {"m": msg_id, "i": "0", "e": "a@x.io", "d": '{"n":1}'},
        {"m": msg_id, "i": "2", "e": "c@x.io"},
    ]
    stored = MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id)))
    assert stored == msgspec.structs.replace(content, total=2, accepted_ms=int(msg_id[:-2]))


async def test_a_scheduled_chunk_keeps_each_recipients_data(redis: Any, p: PartitionKeys) -> None:
    msg_id = f"{now_ms()}-0"
    data = ['{"n":"a\\tb\\nc"}', "", '{"n":3}']
    result = await dispatch(
        redis,
        p,
        msg_id,
        0,
        addresses=["a@x.io", "", "c@x.io"],
        data=data,
        due_ms=now_ms() + 60_000,
        schedule_chunk=2,
    )
    assert result == [3, "scheduled"]
    assert await redis.hgetall(p.schedule_data) == {
        f"{msg_id}:0": 'a@x.io\t{"n":"a\\tb\\nc"}\n',
        f"{msg_id}:2": 'c@x.io\t{"n":3}',
    }
    await redis.zadd(p.schedule, {f"{msg_id}:0": 0, f"{msg_id}:2": 0})  # due now
    assert await promote(redis, p) == [2, 2]
    assert await read_jobs(redis, p) == [
        {"m": msg_id, "i": "0", "e": "a@x.io", "d": '{"n":"a\\tb\\nc"}'},
        {"m": msg_id, "i": "2", "e": "c@x.io", "d": '{"n":3}'},
    ]


async def test_promote_reads_chunks_written_before_merge_data(redis: Any, p: PartitionKeys) -> None:
    await redis.zadd(p.schedule, {"1-0:0": 0})
    await redis.hset(p.schedule_data, "1-0:0", "a@x.io\n\nc@x.io\td")
    assert await promote(redis, p) == [1, 2]
    assert await read_jobs(redis, p) == [
        {"m": "1-0", "i": "0", "e": "a@x.io"},
        {"m": "1-0", "i": "2", "e": "c@x.io", "d": "d"},
    ]


async def test_cancel_counts_recipients_of_chunks_with_data(redis: Any, p: PartitionKeys) -> None:
    msg_id = f"{now_ms() - 1000}-0"
    await dispatch(
        redis,
        p,
        msg_id,
        0,
        addresses=["a@x.io", "b@x.io", ""],
        data=['{"n":1}', "", ""],
        due_ms=now_ms() + 60_000,
    )
    script = scripts.register(redis, "cancel")
    assert await script(keys=p.cancel_keys(TOPIC), args=[now_ms(), TOPIC, TTL_MS]) == 2


# --- template_put.lua ---------------------------------------------------------------------------


async def test_template_put_versions_keeps_the_newest_and_indexes_names(redis: Any) -> None:
    keys = Keys()
    script = scripts.register(redis, "template_put")

    async def put(name: str, subject: str, keep: int = 3, most: int = 10) -> list[int]:
        body = json.dumps({"subject": subject, "html": "<p>x</p>"})
        result: list[int] = await script(
            keys=[keys.template(name), keys.templates], args=[name, body, keep, most]
        )
        return result

    assert await put("welcome", "v1") == [1, 1]
    for n in range(2, 6):
        assert await put("welcome", f"v{n}") == [n, 0]
    stored = await redis.hgetall(keys.template("welcome"))
    assert sorted(k for k in stored if k.isdigit()) == ["3", "4", "5"]  # the newest 3
    current = json.loads(stored["current"])
    assert (current["version"], current["subject"], current["html"]) == (5, "v5", "<p>x</p>")
    assert current["updated_ms"] == int(stored["updated_ms"]) > 0
    assert stored["5"] == stored["current"] and json.loads(stored["3"])["subject"] == "v3"
    assert await redis.zrange(keys.templates, 0, -1) == ["welcome"]
    # a new name beyond the most allowed is refused; an existing one can still change
    assert await put("other", "x", most=1) == [0, 0]
    assert await put("welcome", "v6", most=1) == [6, 0]
    assert not await redis.exists(keys.template("other"))
