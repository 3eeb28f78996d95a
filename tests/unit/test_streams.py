"""Trimming keeps every entry some consumer group still needs."""

from __future__ import annotations

from typing import Any

from sesflow.common.streams import needed_floor, parse_id, trim_acknowledged


def test_parse_id_orders_like_redis() -> None:
    assert parse_id("10-2") < parse_id("10-10") < parse_id("11-0")
    assert parse_id("0") == (0, 0)


async def test_trim_keeps_pending_and_unread_entries_of_every_group(redis: Any) -> None:
    ids = [await redis.xadd("s", {"n": str(n)}) for n in range(6)]
    assert await trim_acknowledged(redis, "s") == 0  # no group: nothing is known to be read
    await redis.xgroup_create("s", "fast", id="0")
    await redis.xgroup_create("s", "slow", id="0")
    assert await trim_acknowledged(redis, "s") == 0  # groups that read nothing
    await redis.xreadgroup("fast", "c", {"s": ">"})  # all 6 read, none acknowledged
    await redis.xack("s", "fast", *ids[:4])
    await redis.xreadgroup("slow", "c", {"s": ">"}, count=3)
    await redis.xack("s", "slow", *ids[:3])
    # fast still needs ids[4]; slow has read up to ids[2] and needs what follows.
    assert await needed_floor(redis, "s") == f"{parse_id(ids[2])[0]}-{parse_id(ids[2])[1] + 1}"
    assert await trim_acknowledged(redis, "s") == 3
    assert [e for e, _ in await redis.xrange("s")] == ids[3:]
