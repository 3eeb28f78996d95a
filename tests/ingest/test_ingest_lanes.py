"""A message's lane and weight: validated like every other field, stored with the content, and
routed by dispatch.lua and promote.lua to the transactional backlog or the topic's bulk one."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import pytest
from test_ingest_lua import TOPIC, dispatch, promote

from sesflow.common import scripts
from sesflow.common.errors import InputError
from sesflow.common.keys import SENDERS_GROUP, PartitionKeys
from sesflow.common.schema import MessageContent, MessageRequest, decode_request, encode
from sesflow.ingest.validation import Limits, validate_body, validate_message

from support.ingestkit import read_jobs

LIMITS = Limits(max_recipients=1000, max_subject_bytes=998, max_content_bytes=100_000)


def body(**fields: Any) -> bytes:
    message = {"topic_id": "t", "subject": "Hi", "content": "<p>x</p>", "emails": ["a@x.io"]}
    return json.dumps({"messages": [message | fields]}).encode()


def test_lane_and_weight_default_to_bulk_and_one() -> None:
    [valid] = validate_body(body(), LIMITS)
    assert (valid.request.lane, valid.request.weight) == ("bulk", 1.0)
    [valid] = validate_body(body(lane="transactional", weight=2.5), LIMITS)
    assert (valid.request.lane, valid.request.weight) == ("transactional", 2.5)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"lane": "express"}, "invalid_lane"),
        ({"lane": 1}, "invalid_type"),
        ({"weight": 0}, "invalid_weight"),
        ({"weight": -1}, "invalid_weight"),
        ({"weight": 1e9}, "invalid_weight"),
        ({"weight": "2"}, "invalid_type"),
        ({"weight": True}, "invalid_type"),
    ],
)
def test_a_bad_lane_or_weight_is_a_400(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_body(body(**fields), LIMITS)
    assert (caught.value.status, caught.value.error) == (400, error)


def test_a_producer_names_the_lane_in_the_requests_entry() -> None:
    message = MessageRequest(topic_id="t", subject="s", content="c", emails=["a@x.io"])
    entry = encode(msgspec.structs.replace(message, lane="transactional"))
    decoded = decode_request(entry)
    assert decoded.lane == "transactional"
    with pytest.raises(InputError):
        validate_message(msgspec.structs.replace(message, lane="nope"), LIMITS, strict=False)


def content(msg_id: str, lane: str = "bulk", weight: float = 1.0) -> MessageContent:
    return MessageContent(
        msg_id=msg_id, topic=TOPIC, subject="Hi", html="<p>x</p>", lane=lane, weight=weight
    )


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_transactional_mail_waits_in_the_transactional_backlog(
    redis: Any, p: PartitionKeys
) -> None:
    msg_id = f"{now_ms()}-0"
    c = content(msg_id, lane="transactional")
    await dispatch(redis, p, msg_id, 0, addresses=["a@x.io", "b@x.io"], content=c)
    assert await redis.llen(p.transactional) == 2
    assert not await redis.exists(p.backlog(TOPIC)) and not await redis.zcard(p.backlog_topics)
    jobs = await read_jobs(redis, p)
    assert [(j["e"], j.get("l")) for j in jobs] == [("a@x.io", "t"), ("b@x.io", "t")]
    assert MessageContent.from_hash(msg_id, await redis.hgetall(p.message(msg_id))).lane == (
        "transactional"
    )


async def test_bulk_mail_waits_in_its_topics_backlog_with_its_weight(
    redis: Any, p: PartitionKeys
) -> None:
    msg_id = f"{now_ms()}-0"
    await dispatch(redis, p, msg_id, 0, addresses=["a@x.io"], content=content(msg_id, weight=3))
    assert await redis.lrange(p.backlog(TOPIC), 0, -1) == [f"{msg_id}\t0\ta@x.io"]
    assert await redis.zrange(p.backlog_topics, 0, -1) == [TOPIC]
    assert float(await redis.hget(p.backlog_weights, TOPIC)) == 3


async def test_a_paused_topic_gets_its_backlog_but_not_its_turn(
    redis: Any, p: PartitionKeys
) -> None:
    await redis.hset(p.paused, TOPIC, '{"reason":"manual","at":1}')
    msg_id = f"{now_ms()}-0"
    await dispatch(redis, p, msg_id, 0, addresses=["a@x.io"], content=content(msg_id))
    assert await redis.llen(p.backlog(TOPIC)) == 1 and not await redis.zcard(p.backlog_topics)


async def test_promoted_chunks_follow_their_lane(redis: Any, p: PartitionKeys) -> None:
    due = now_ms() + 100
    tx, bulk = f"{now_ms()}-1", f"{now_ms()}-2"
    for msg_id, lane in ((tx, "transactional"), (bulk, "bulk")):
        await dispatch(
            redis, p, msg_id, 0, addresses=["a@x.io"], due_ms=due, content=content(msg_id, lane)
        )
    await asyncio.sleep(0.15)  # the chunks fall due
    assert await promote(redis, p) == [2, 2]
    assert await redis.lrange(p.transactional, 0, -1) == [f"{tx}\t0\ta@x.io"]
    assert await redis.lrange(p.backlog(TOPIC), 0, -1) == [f"{bulk}\t0\ta@x.io"]


async def allow_direct(redis: Any, p: PartitionKeys, rate: float, burst: int) -> None:
    """What a live sender's pump publishes on each call: transactional jobs may skip it."""
    script = scripts.register(redis, "pump")
    args = [SENDERS_GROUP, 100, 10, f"{p.prefix}backlog:", 0.8, 5000, repr(rate), burst]
    await script(keys=p.pump_keys(), args=args)


async def test_transactional_mail_skips_a_live_pump_up_to_its_allowance(
    redis: Any, p: PartitionKeys
) -> None:
    """Up to the pump's allowance, transactional jobs go straight to `sends`, as the pump would
    add them; the rest wait in the backlog, and so does what comes after them."""
    await allow_direct(redis, p, rate=1.0, burst=2)
    first, second = f"{now_ms()}-1", f"{now_ms()}-2"
    addresses = ["a@x.io", "b@x.io", "c@x.io"]
    c = content(first, lane="transactional")
    await dispatch(redis, p, first, 0, addresses=addresses, data=['{"n":1}', "", ""], content=c)
    jobs = [fields for _, fields in await redis.xrange(p.sends)]
    assert jobs == [
        {"m": first, "i": "0", "e": "a@x.io", "d": '{"n":1}', "l": "t"},
        {"m": first, "i": "1", "e": "b@x.io", "l": "t"},
    ]
    assert await redis.lrange(p.transactional, 0, -1) == [f"{first}\t2\tc@x.io"]
    # one more token a second later, but a job already waits in the backlog: this one too
    await redis.hset(p.pump, "tx_tat", "0")
    c = content(second, lane="transactional")
    await dispatch(redis, p, second, 0, addresses=["d@x.io"], content=c)
    assert await redis.xlen(p.sends) == 2 and await redis.llen(p.transactional) == 2


async def test_transactional_mail_waits_for_the_pump_when_its_allowance_is_spent(
    redis: Any, p: PartitionKeys
) -> None:
    await allow_direct(redis, p, rate=1.0, burst=1)
    msg_ids = [f"{now_ms()}-{n}" for n in range(3)]
    for msg_id in msg_ids:
        c = content(msg_id, lane="transactional")
        await dispatch(redis, p, msg_id, 0, addresses=["a@x.io"], content=c)
        await redis.delete(p.transactional)  # the pump took it: the backlog is empty again
    assert [f["m"] for _, f in await redis.xrange(p.sends)] == msg_ids[:1]


async def test_without_a_live_pump_transactional_mail_waits_in_its_backlog(
    redis: Any, p: PartitionKeys
) -> None:
    await allow_direct(redis, p, rate=100.0, burst=10)
    await redis.hset(p.pump, "tx_until", str(now_ms() - 1))  # the pump fell silent
    msg_id = f"{now_ms()}-0"
    c = content(msg_id, lane="transactional")
    await dispatch(redis, p, msg_id, 0, addresses=["a@x.io"], content=c)
    assert not await redis.xlen(p.sends) and await redis.llen(p.transactional) == 1


async def test_while_bulk_waits_skipping_the_pump_spends_the_transactional_credit(
    redis: Any, p: PartitionKeys
) -> None:
    """A transactional flood must not take more than its share from bulk mail by skipping the
    pump: while bulk waits, a job that skips it spends the pump's credit (one job between two
    pump calls), and the others wait for the pump's share."""
    await allow_direct(redis, p, rate=1000.0, burst=100)
    bulk = f"{now_ms()}-9"
    await dispatch(redis, p, bulk, 0, addresses=["bulk@x.io"], content=content(bulk))
    assert await redis.zcard(p.backlog_topics) == 1  # bulk mail waits
    await redis.hset(p.pump, "tx_credit", "1.000000")  # what a pump call leaves at most
    msg_ids = [f"{now_ms()}-{n}" for n in range(3)]
    for msg_id in msg_ids:
        c = content(msg_id, lane="transactional")
        await dispatch(redis, p, msg_id, 0, addresses=["a@x.io"], content=c)
        await redis.delete(p.transactional)  # as if the pump took it
    assert [f["m"] for _, f in await redis.xrange(p.sends)] == msg_ids[:1]
    assert float(await redis.hget(p.pump, "tx_credit")) == 0


async def test_a_pump_that_finds_no_room_does_not_renew_the_allowance(
    redis: Any, p: PartitionKeys
) -> None:
    """Senders that take nothing (paused, throttled, stuck) leave no room: the allowance is
    not renewed, and transactional jobs wait in their backlog, not on `sends`."""
    script = scripts.register(redis, "pump")
    await redis.xgroup_create(p.sends, SENDERS_GROUP, id="0", mkstream=True)
    for n in range(3):
        await redis.xadd(p.sends, {"m": f"1-{n}", "i": "0", "e": "x@x.io"})
    args = [SENDERS_GROUP, 3, 10, f"{p.prefix}backlog:", 0.8, 5000, "100.0", 10]
    assert await script(keys=p.pump_keys(), args=args) == [0, 3, 0]  # full: no room
    assert not await redis.hexists(p.pump, "tx_until")
