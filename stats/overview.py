"""The dashboard's one request: every recent topic with progress and ETA, live rates, queue, and
the pauses in force (all bulk sending, paused topics: manual or the reputation guard's)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sesflow.common import scripts
from sesflow.common.connection import Redis
from sesflow.common.keys import Keys
from sesflow.common.pauses import ALL_BULK, NOT_PAUSED, Pause, Pauses
from sesflow.common.settings import Settings
from sesflow.common.setup_pauses import pauses_view
from sesflow.stats.counters import bucket_field
from sesflow.stats.queries import (
    RATE_WINDOW_S,
    queue_depth,
    read_counts,
    recent_rate,
    recent_topics,
    summary,
)

MAX_TOPICS = 200


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def topic_row(topic: str, counts: Counter[str], rate: float, last_ms: int) -> dict[str, Any]:
    row: dict[str, Any] = {"topic_id": topic, **summary(counts)}
    total, remaining = row["total"], row["created"]
    row["finished"] = total - remaining
    row["progress"] = round(row["finished"] / total, 6) if total else 0.0
    row["send_rate"] = round(rate, 3)
    row["done"] = total > 0 and remaining == 0
    row["eta_seconds"] = round(remaining / rate, 1) if remaining and rate > 0 else None
    row["last_activity_ms"] = last_ms
    return row


async def topic_rows(
    client: Redis, keys: Keys, topics: list[tuple[str, int]], now: float
) -> list[dict[str, Any]]:
    """Every topic's counters and the `sent` minute buckets of the rate window."""
    minute = int(now // 60)
    fields = [bucket_field("sent", minute - 1), bucket_field("sent", minute)]
    window = RATE_WINDOW_S + (now - minute * 60)
    names = [topic for topic, _ in topics]
    counts = {topic: Counter[str]() for topic in names}
    sent_recently = dict.fromkeys(names, 0)
    if names:
        read = scripts.register(client, "stats_read")
        # One script call per partition, not two commands per topic (see stats_read.lua).
        for p in keys.partitions:
            replies = await read(
                keys=[*(p.stats_topic(t) for t in names), *(p.stats_series(t) for t in names)],
                args=[len(names), *fields],
            )
            for topic, flat in zip(names, replies[: len(names)], strict=True):
                counts[topic].update({flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)})
            for topic, values in zip(names, replies[len(names) :], strict=True):
                sent_recently[topic] += sum(int(v) for v in values if v)
    rows = [
        topic_row(topic, counts[topic], sent_recently[topic] / window, last_ms)
        for topic, last_ms in topics
    ]
    return rows


async def overview(
    client: Redis, keys: Keys, settings: Settings, quota: dict[str, Any], now: float, limit: int
) -> dict[str, Any]:
    async def recent_rows() -> list[dict[str, Any]]:
        return await topic_rows(client, keys, await recent_topics(client, keys, limit), now)

    # Independent reads, concurrently on the pool: the page waits for the slowest, not the sum.
    global_counts, topics, send_rate, queue, setup_faults, pauses = await asyncio.gather(
        read_counts(client, keys, lambda p: p.stats_global),
        recent_rows(),
        recent_rate(client, keys, lambda p: p.stats_minutely, "sent", now),
        queue_depth(client, keys),
        pauses_view(client, keys),
        Pauses(client, keys).all(),
    )
    for row in topics:
        row.update(paused_view(pauses.get(row["topic_id"])))
    totals = summary(global_counts or Counter())
    sent = totals["sent"]
    return {
        "generated_at": int(now * 1000),
        "configured_rate": settings.email_rate,
        "send_rate": round(send_rate, 3),
        "totals": totals,
        "rates": {
            "delivery": ratio(totals["delivered"], sent),
            "bounce": ratio(totals["bounced"], sent),
            "hard_bounce": ratio(totals["bounced_hard"], sent),
            "complaint": ratio(totals["complained"], sent),
            "open": ratio(totals["opened_unique"], sent),
            "click": ratio(totals["clicked_unique"], sent),
        },
        "queue": queue,
        "quota": quota,
        # Setups the senders paused after a setup fault (sender.setup_faults): the page's alert.
        "setup_faults": setup_faults,
        # All bulk sending paused (by hand or by the account-wide reputation guard), and every
        # paused topic, oldest pause first: the page's red alert, with the figures of a trip.
        "bulk_pause": paused_view(pauses.get(ALL_BULK)),
        "paused_topics": [
            {"topic_id": topic, **pause.view()}
            for topic, pause in sorted(pauses.items(), key=lambda kv: kv[1].at)
            if topic != ALL_BULK
        ][:MAX_TOPICS],
        "topics": topics,
    }


def paused_view(pause: Pause | None) -> dict[str, Any]:
    return pause.view() if pause is not None else dict(NOT_PAUSED)
