"""What the stats tests share: adding events, waiting until stats has read them, counters."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sesflow.common.keys import STATS_GROUP, Keys
from sesflow.common.schema import Event, event_fields

FAST = {"STATS_FLUSH_INTERVAL": "0.05", "RECLAIM_IDLE": "0.3", "SHUTDOWN_GRACE": "3"}


async def add_events(redis: Any, keys: Keys, *events: Event, partition: int = 0) -> list[str]:
    p = keys.partition(partition)
    return [await redis.xadd(p.events, event_fields(e)) for e in events]  # type: ignore[arg-type]


async def drained(redis: Any, keys: Keys, within: float = 5.0) -> None:
    """Wait until every entry of every events stream is read and acknowledged by `stats`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = True
        for p in keys.partitions:
            last = await redis.xrevrange(p.events, count=1)
            if not last:
                continue
            try:
                groups = await redis.xinfo_groups(p.events)
            except Exception:
                done = False
                break
            group = next((g for g in groups if g["name"] == STATS_GROUP), None)
            if group is None or group["pending"] or group["last-delivered-id"] != last[0][0]:
                done = False
        if done:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("events were not drained in time")


async def counters(redis: Any, key: str) -> dict[str, int]:
    return {k: int(v) for k, v in (await redis.hgetall(key)).items()}
