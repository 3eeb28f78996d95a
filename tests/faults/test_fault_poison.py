"""Fault: poison entries. Whatever a producer (or a bug) XADDs to `requests`, `sends` or `events`
(bad JSON, missing fields, bytes that are not UTF-8), the entry is dead-lettered with a reason and
acknowledged, and every loop keeps working: a normal message sent afterwards is delivered and
counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.backlog import leftovers
from support.faultkit import (
    KEYS,
    UNREACHABLE,
    Expect,
    all_final,
    check_exactly_once,
    check_stats_agree,
    emails_for,
    post_campaign,
    start_roles,
)
from support.procs import Cluster
from support.stubprocess import StubProcess
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PART = KEYS.partition(0)
NOT_UTF8 = b"\xff\xfe not utf-8 \xc3\x28"
POISON: dict[str, list[dict[Any, Any]]] = {
    KEYS.requests: [
        {"message": "{this is not json"},
        {"not_message": "x"},
        {"message": NOT_UTF8},
    ],
    PART.sends: [
        {"m": "", "i": "zero", "e": "nobody"},
        {"junk": "x"},
        {"m": NOT_UTF8, "i": "0", "e": NOT_UTF8},
    ],
    PART.events: [
        {"e": "{not an event"},
        {"x": "y"},
        {"e": NOT_UTF8},
    ],
}
DEAD = {
    KEYS.requests: KEYS.requests_dead,
    PART.sends: PART.sends_dead,
    PART.events: PART.events_dead,
}


async def dead_letters(raw: aioredis.Redis) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for stream, dead in DEAD.items():
        found[stream] = [fields for _, fields in await raw.xrange(dead) or []]
    return found


async def test_poison_entries_are_dead_lettered_and_the_loops_go_on(
    redis_url: str, make_stub: Callable[..., StubProcess], make_cluster: Callable[..., Cluster]
) -> None:
    stub = make_stub(rate=100)
    cluster = make_cluster(redis_url, stub, EMAIL_RATE="50")
    start_roles(cluster, senders=1)
    raw = aioredis.Redis.from_url(redis_url)  # bytes in, bytes out
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            # Before any good message: every stream starts with its poison.
            for stream, entries in POISON.items():
                for fields in entries:
                    await raw.xadd(stream, fields)

            found = await until(
                lambda: dead_letters(raw),
                lambda d: all(len(d[s]) == len(POISON[s]) for s in POISON),
                what="every poison entry dead-lettered",
                within=20,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            for stream, letters in found.items():
                for letter in letters:
                    assert letter.get(b"reason"), (stream, letter)

            topic = "after-poison"
            emails = emails_for(topic, 3)
            msg_id = await post_campaign(http, cluster, topic, emails)
            await until(
                lambda: all_final(client, msg_id, 3),
                what="sends",
                within=20,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            verdict = await check_exactly_once(
                client, stub, msg_id, emails, Expect(ambiguous=set())
            )
            assert verdict.sent == 3
            await check_stats_agree(http, cluster, topic, verdict)

            # all acknowledged, nothing pending; only the three `sends` poisons are dead jobs
            rest = await until(
                lambda: leftovers(client),
                lambda f: not any(v for k, v in f.items() if not k.startswith("sends_dead")),
                what="nothing pending",
                within=15,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            assert rest["sends_dead/0"] == len(POISON[PART.sends]), rest
            assert all(p.running for p in cluster.procs), cluster.all_logs()
        finally:
            await raw.aclose()
            await client.aclose()
