"""What the stats tests share: adding events, waiting until stats has read them, counters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sesflow.common.keys import STATS_GROUP, Keys
from sesflow.common.schema import Event, event_fields
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import StatsAggregator, stats_client

from support.until import until

FAST = {"STATS_FLUSH_INTERVAL": "0.05", "RECLAIM_IDLE": "0.3", "SHUTDOWN_GRACE": "3"}


async def add_events(redis: Any, keys: Keys, *events: Event, partition: int = 0) -> list[str]:
    p = keys.partition(partition)
    return [await redis.xadd(p.events, event_fields(e)) for e in events]


async def undrained(redis: Any, keys: Keys, group: str = STATS_GROUP) -> list[str]:
    """The events streams `group` (stats by default) has not read and acknowledged to their
    last entry."""
    behind = []
    for p in keys.partitions:
        last = await redis.xrevrange(p.events, count=1)
        if not last:
            continue
        groups = await redis.xinfo_groups(p.events)
        found = next((g for g in groups if g["name"] == group), None)
        if found is None or found["pending"] or found["last-delivered-id"] != last[0][0]:
            behind.append(p.events)
    return behind


async def drained(redis: Any, keys: Keys, within: float = 5.0) -> None:
    """Wait until every entry of every events stream is read and acknowledged by `stats`."""
    await until(
        lambda: undrained(redis, keys),
        lambda behind: not behind,
        what="stats to drain every events stream",
        within=within,
    )


async def counters(redis: Any, key: str) -> dict[str, int]:
    return {k: int(v) for k, v in (await redis.hgetall(key)).items()}


def aggregator(settings: Settings, consumer: str | None = None) -> StatsAggregator:
    """An aggregator with a client of its own, as `python -m sesflow.stats` makes it."""
    return StatsAggregator(stats_client(settings), settings, consumer=consumer)


@contextlib.asynccontextmanager
async def running(consumer: StatsAggregator) -> AsyncIterator[StatsAggregator]:
    """Run `consumer` for the block; then stop it (it drains within SHUTDOWN_GRACE) and close
    its client."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        try:
            await task
        finally:
            await consumer.client.aclose()
