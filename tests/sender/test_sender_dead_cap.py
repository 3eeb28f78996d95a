"""`sends:dead` has a length cap, like the other dead-letter streams: a flood of malformed
entries must not fill Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.streams import DEAD_LETTER_MAXLEN
from sesflow.sender.state import DeliveryStore

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
NODE = 100  # stream-node-max-entries: MAXLEN ~ trims whole nodes of this many entries


async def test_sends_dead_is_capped(redis: Any) -> None:
    await redis.xgroup_create(PART.sends, SENDERS_GROUP, id="0", mkstream=True)
    store = DeliveryStore(redis, KEYS, 60, dead_maxlen=10)
    for start in range(0, 400, 50):
        await asyncio.gather(
            *(
                store.dead_letter(PART, f"1-{n}", {"junk": str(n)}, "malformed")
                for n in range(start, start + 50)
            )
        )
    length = await redis.xlen(PART.sends_dead)
    assert 10 <= length <= 10 + NODE
    newest = await redis.xrevrange(PART.sends_dead, count=1)
    assert newest[0][1]["junk"] == "399"  # the oldest go, the newest stay


def test_the_default_cap_is_the_one_of_every_dead_letter_stream(redis: Any) -> None:
    assert DeliveryStore(redis, KEYS, 60).dead_maxlen == DEAD_LETTER_MAXLEN == 100_000
