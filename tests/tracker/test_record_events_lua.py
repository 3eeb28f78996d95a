"""common/lua/record_events.lua against a real redis-server: dedupe mark and events in one step,
first-touch logic, TTLs."""

from __future__ import annotations

from typing import Any

from sesflow.common.keys import Keys
from sesflow.common.scripts import register

KEYS = Keys("sesflow", 2)
PART = KEYS.partition(1)


async def run(redis: Any, *triples: str, dedupe: str = "") -> int:
    keys = [PART.events, PART.opens("m-1")]
    if dedupe:
        keys.append(PART.sns_seen(dedupe))
    script = register(redis, "record_events")
    return int(await script(keys=keys, args=[600, 3600, 1234, *triples]))


async def entries(redis: Any) -> list[str]:
    return [fields["e"] for _, fields in await redis.xrange(PART.events)]


async def test_keys_share_one_hash_tag() -> None:
    tags = {key.split("}")[0] for key in (PART.events, PART.opens("x"), PART.sns_seen("y"))}
    assert tags == {PART.tag.removesuffix("}")}


async def test_dedupe_mark_and_events_are_written_together(redis: Any) -> None:
    assert await run(redis, "", "a", "", "", "b", "", dedupe="sns-1") == 2
    assert await run(redis, "", "a", "", dedupe="sns-1") == -1
    assert await entries(redis) == ["a", "b"]
    assert 0 < await redis.ttl(PART.sns_seen("sns-1")) <= 600


async def test_without_dedupe_every_call_appends(redis: Any) -> None:
    assert await run(redis, "", "a", "") == 1
    assert await run(redis, "", "a", "") == 1
    assert await entries(redis) == ["a", "a"]
    assert await redis.exists(PART.opens("m-1")) == 0  # untouched when no field is given


async def test_first_touch_picks_the_payload(redis: Any) -> None:
    assert await run(redis, "0", "first", "again") == 1
    assert await run(redis, "0", "first", "again") == 1
    assert await run(redis, "c:0", "first-click", "again-click") == 1
    assert await run(redis, "u:0", "unsub", "") == 1
    assert await run(redis, "u:0", "unsub", "") == 0  # "" = record nothing the second time
    assert await entries(redis) == ["first", "again", "first-click", "unsub"]
    assert await redis.hgetall(PART.opens("m-1")) == {"0": "1234", "c:0": "1234", "u:0": "1234"}
    assert 0 < await redis.ttl(PART.opens("m-1")) <= 3600


async def test_a_duplicate_touches_nothing(redis: Any) -> None:
    await redis.set(PART.sns_seen("sns-2"), "1")
    assert await run(redis, "0", "first", "again", dedupe="sns-2") == -1
    assert await redis.exists(PART.opens("m-1"), PART.events) == 0
