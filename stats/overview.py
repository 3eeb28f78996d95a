"""The dashboard's main request: every recent topic with progress, ETA, lane and pause, live
rates, the queue by lane, and the pauses in force (all bulk sending, paused topics: manual or the
reputation guard's).

The send rate is `sent` per second over the last RATE_WINDOW_S whole seconds that stats has
surely applied; a topic's rate is its share of that same window, and its ETA is what it still
has to send divided by that share."""

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
from sesflow.stats.queries import (
    RATE_WINDOW_S,
    queue_depth,
    rate_seconds,
    read_counts,
    recent_topics,
    send_rate,
    settle_s,
    summary,
)

MAX_TOPICS = 200
# Pause reasons of the reputation guard (`stats.reputation`): such a topic is "guarded".
GUARD_REASONS = ("bounce_rate", "complaint_rate")
DEFAULT_SETTLE_S = 2  # settle_s() of the default STATS_FLUSH_INTERVAL, 1 s


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
    client: Any,
    keys: Keys,
    topics: list[tuple[str, int]],
    now: float,
    settle: int = DEFAULT_SETTLE_S,
) -> list[dict[str, Any]]:
    """Every topic's counters, its `sent` per second over the rate window (its share of the
    live send rate, from which its ETA follows) and its bulk jobs waiting for the pump."""
    seconds = rate_seconds(now, settle)
    minutes = sorted({second // 60 for second in seconds})
    names = [topic for topic, _ in topics]
    counts = {topic: Counter[str]() for topic in names}
    sent_recently = dict.fromkeys(names, 0)
    waiting = dict.fromkeys(names, 0)
    if names:
        read = scripts.register(client, "stats_read")
        n = len(names)
        # One script call per partition, not several commands per topic (see stats_read.lua).
        for p in keys.partitions:
            recent = [p.stats_seconds(minute, t) for t in names for minute in minutes]
            replies = await read(
                keys=[*(p.stats_topic(t) for t in names), *(p.backlog(t) for t in names), *recent],
                args=[n, n, *(str(second) for second in seconds)],
            )
            for topic, flat in zip(names, replies[:n], strict=True):
                counts[topic].update({flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)})
            for topic, length in zip(names, replies[n : 2 * n], strict=True):
                waiting[topic] += int(length)
            for k, values in enumerate(replies[2 * n :]):
                sent_recently[names[k // len(minutes)]] += sum(int(v) for v in values if v)
    rows = []
    for topic, last_ms in topics:
        row = topic_row(topic, counts[topic], sent_recently[topic] / len(seconds), last_ms)
        # Only bulk mail waits in a topic's own backlog; transactional mail of every topic
        # shares one list, so a topic with nothing waiting has no lane to show.
        row["backlog"] = waiting[topic]
        row["lane"] = "bulk" if row["backlog"] else None
        rows.append(row)
    return rows


async def overview(
    client: Redis, keys: Keys, settings: Settings, quota: dict[str, Any], now: float, limit: int
) -> dict[str, Any]:
    settle = settle_s(settings.stats_flush_interval)

    async def recent_rows() -> list[dict[str, Any]]:
        return await topic_rows(client, keys, await recent_topics(client, keys, limit), now, settle)

    # Independent reads, concurrently on the pool: the page waits for the slowest, not the sum.
    global_counts, topics, rate, queue, setup_faults, pauses = await asyncio.gather(
        read_counts(client, keys, lambda p: p.stats_global),
        recent_rows(),
        send_rate(client, keys, now, settle),
        queue_depth(client, keys),
        pauses_view(client, keys),
        Pauses(client, keys).all(),
    )
    for row in topics:
        row.update(paused_view(pauses.get(row["topic_id"])))
        row["guarded"] = row["paused_reason"] in GUARD_REASONS
    totals = summary(global_counts or Counter())
    sent = totals["sent"]
    return {
        "generated_at": int(now * 1000),
        "configured_rate": settings.email_rate,
        "send_rate": round(rate, 3),
        "rate_window_s": RATE_WINDOW_S,
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
