"""common/lua/record_events.lua against a real redis-server: dedupe mark and events in one step,
first-touch logic, TTLs, and the marks older versions wrote."""

from __future__ import annotations

import time
from typing import Any

from sesflow.common.day_buckets import DAY_S, day_of
from sesflow.common.keys import Keys
from sesflow.common.scripts import register
from sesflow.tracker.recorder import EventRecorder, dedupe_keys, first_click, first_open

KEYS = Keys("sesflow", 2)
PART = KEYS.partition(1)
WINDOW = 2 * DAY_S  # three days of dedupe hashes


async def run(redis: Any, *quads: str | int, dedupe: str = "", now: float = 0.0) -> int:
    keys = [PART.events, PART.touches("m-1"), PART.opens("m-1")]
    field, hashes = b"", 0
    if dedupe:
        field, more = dedupe_keys(PART, dedupe, WINDOW, now or time.time())
        keys += more
        hashes = len(more) - 1
    at = int(time.time()) + 600
    script = register(redis, "record_events")
    return int(await script(keys=keys, args=[field, at, 3600, hashes, *quads]))


async def entries(redis: Any) -> list[str]:
    return [fields["e"] for _, fields in await redis.xrange(PART.events)]


async def test_keys_share_one_hash_tag() -> None:
    _, dedupe = dedupe_keys(PART, "y", WINDOW, time.time())
    names = (PART.events, PART.touches("x"), PART.opens("x"), *dedupe)
    assert {key.split("}")[0] for key in names} == {PART.tag.removesuffix("}")}
    assert len(dedupe) == 4  # 3 days of hashes, then the older per-delivery mark


async def test_dedupe_mark_and_events_are_written_together(redis: Any) -> None:
    assert await run(redis, "", "", "a", "", "", "", "b", "", dedupe="sns-1") == 2
    assert await run(redis, "", "", "a", "", dedupe="sns-1") == -1
    assert await entries(redis) == ["a", "b"]
    field, [today, *_] = dedupe_keys(PART, "sns-1", WINDOW, time.time())
    assert await redis.hexists(today, field)
    assert 0 < await redis.ttl(today) <= 600
    assert await redis.object("encoding", today) in ("listpack", "ziplist")


async def test_a_mark_of_an_earlier_day_in_the_window_is_a_duplicate(redis: Any) -> None:
    yesterday = time.time() - DAY_S
    assert await run(redis, "", "", "a", "", dedupe="sns-3", now=yesterday) == 1
    assert await run(redis, "", "", "a", "", dedupe="sns-3") == -1
    assert day_of(yesterday) != day_of(time.time())
    assert await entries(redis) == ["a"]


async def test_without_dedupe_every_call_appends(redis: Any) -> None:
    assert await run(redis, "", "", "a", "") == 1
    assert await run(redis, "", "", "a", "") == 1
    assert await entries(redis) == ["a", "a"]
    assert await redis.exists(PART.touches("m-1")) == 0  # untouched when no bit is given


async def test_first_touch_picks_the_payload(redis: Any) -> None:
    assert await run(redis, 0, "0", "first", "again") == 1
    assert await run(redis, 0, "0", "first", "again") == 1
    assert await run(redis, 1, "c:0", "first-click", "again-click") == 1
    assert await run(redis, 2, "u:0", "unsub", "") == 1
    assert await run(redis, 2, "u:0", "unsub", "") == 0  # "" = record nothing the second time
    assert await run(redis, 4 * 9, "9", "first-9", "again-9") == 1
    assert await entries(redis) == ["first", "again", "first-click", "unsub", "first-9"]
    assert await redis.strlen(PART.touches("m-1")) == 5  # 4 bits per recipient, up to index 9
    assert await redis.exists(PART.opens("m-1")) == 0
    assert 0 < await redis.ttl(PART.touches("m-1")) <= 3600


async def test_marks_an_older_version_wrote_still_count(redis: Any) -> None:
    await redis.hset(PART.opens("m-1"), mapping={"0": "1234", "u:3": "1234"})
    assert await run(redis, 0, "0", "first", "again") == 1
    assert await run(redis, 4 * 3 + 2, "u:3", "unsub", "") == 0
    assert await entries(redis) == ["again"]
    await redis.set(PART.sns_seen("sns-old"), "1")
    assert await run(redis, "", "", "a", "", dedupe="sns-old") == -1


async def test_a_duplicate_touches_nothing(redis: Any) -> None:
    await run(redis, dedupe="sns-2")
    assert await run(redis, 0, "0", "first", "again", dedupe="sns-2") == -1
    assert await redis.exists(PART.touches("m-1"), PART.events) == 0


async def test_the_recorder_sees_its_own_marks_and_older_ones(redis: Any) -> None:
    recorder = EventRecorder(redis, 3600)
    assert not await recorder.seen(PART, "sns-4", WINDOW)
    assert await recorder.record(PART, "m-1", [], dedupe_id="sns-4", dedupe_ttl=WINDOW) == 0
    assert await recorder.seen(PART, "sns-4", WINDOW)
    await redis.set(PART.sns_seen("sns-5"), "1")
    assert await recorder.seen(PART, "sns-5", WINDOW)
    assert first_open(3).bit == 12 and first_click(3).bit == 13
