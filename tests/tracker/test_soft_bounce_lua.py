"""`soft_bounce.lua` on a real redis-server: one member per bounced mail, a window, a cap, a TTL."""

from __future__ import annotations

from typing import Any

from sesflow.common.keys import Keys
from sesflow.common.scripts import register

KEY = Keys().soft_bounces("a@x.io")
NOW = 1_800_000_000_000
DAY = 24 * 3600 * 1000
WEEK = 7 * DAY
LIMIT = 3


async def count(redis: Any, member: str, at: int, now: int = NOW, limit: int = LIMIT) -> int:
    script = register(redis, "soft_bounce")
    return int(await script(keys=[KEY], args=[member, at, now, WEEK, limit]))


async def test_each_bounced_mail_counts_once(redis: Any) -> None:
    assert await count(redis, "m1", NOW - 2 * DAY) == 1
    assert await count(redis, "m1", NOW - 2 * DAY) == 1  # the same bounce again
    assert await count(redis, "m2", NOW - DAY) == 2
    assert await count(redis, "m2", NOW - DAY, now=NOW + 1000) == 2
    assert await count(redis, "m3", NOW) == 3
    assert await redis.zscore(KEY, "m1") == NOW - 2 * DAY


async def test_bounces_older_than_the_window_do_not_count(redis: Any) -> None:
    assert await count(redis, "old", NOW - WEEK) == 0  # at the edge: out
    assert not await redis.exists(KEY)  # nothing left: no key
    assert await count(redis, "m1", NOW - WEEK + 1) == 1
    # A week and a day later the first bounce has left the window.
    assert await count(redis, "m2", NOW + DAY, now=NOW + DAY) == 1
    assert await redis.zrange(KEY, 0, -1) == ["m2"]


async def test_at_most_limit_members_are_kept(redis: Any) -> None:
    for n in range(6):
        assert await count(redis, f"m{n}", NOW - 6 * DAY + n * DAY) == min(n + 1, LIMIT)
    assert await redis.zrange(KEY, 0, -1) == ["m3", "m4", "m5"]  # the newest


async def test_the_key_expires_one_window_after_the_last_bounce(redis: Any) -> None:
    await count(redis, "m1", NOW - DAY)
    ttl = await redis.pttl(KEY)
    assert WEEK - 5000 < ttl <= WEEK


async def test_a_bounce_from_the_future_counts_as_now(redis: Any) -> None:
    assert await count(redis, "m1", NOW + WEEK) == 1
    assert await redis.zscore(KEY, "m1") == NOW
