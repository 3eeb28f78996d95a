"""The dashboard's charts: `sent` per second against EMAIL_RATE over the last minutes, and the
feedback per minute over the last hours. Every read is a fixed number of hash fields (one per
second or minute shown), whatever the number of events behind them."""

from __future__ import annotations

import asyncio
from typing import Any

from sesflow.common.keys import Keys
from sesflow.common.settings import Settings
from sesflow.stats.counters import RECENT_S
from sesflow.stats.queries import (
    MAX_POINTS,
    RATE_WINDOW_S,
    SeriesQuery,
    sent_per_second,
    series,
    settle_s,
)

FEEDBACK_METRICS = ("delivered", "bounced", "complained", "opened", "clicked")
MAX_MINUTES = RECENT_S // 60
MAX_HOURS = MAX_POINTS // 60


async def charts(
    client: Any, keys: Keys, settings: Settings, now: float, minutes: int, hours: int
) -> dict[str, Any]:
    """`minutes` (1 to MAX_MINUTES) of `sent` per second, ending where the live rate's window
    ends (younger seconds may still be filling); `hours` (1 to MAX_HOURS) of feedback per
    minute, up to the current minute (so far)."""
    end = int(now) - settle_s(settings.stats_flush_interval)
    seconds = list(range(end - minutes * 60, end))
    last = int(now // 60) * 60
    first = last - (hours * 60 - 1) * 60

    async def feedback(metric: str) -> list[int]:
        query = SeriesQuery(metric, "", first, last, 60)
        return [value for _, value in await series(client, keys, query, now)]

    sent, *counts = await asyncio.gather(
        sent_per_second(client, keys, seconds), *(feedback(m) for m in FEEDBACK_METRICS)
    )
    return {
        "generated_at": int(now * 1000),
        "configured_rate": settings.email_rate,
        "rate_window_s": RATE_WINDOW_S,
        "sent_per_second": {"start_ms": seconds[0] * 1000, "step_s": 1, "values": sent},
        "feedback_per_minute": {
            "start_ms": first * 1000,
            "step_s": 60,
            "series": dict(zip(FEEDBACK_METRICS, counts, strict=True)),
        },
    }
