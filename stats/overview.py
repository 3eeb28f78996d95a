"""The dashboard's one request: every recent topic with progress and ETA, live rates, queue."""

from __future__ import annotations

from collections import Counter
from typing import Any

from common.keys import Keys
from common.settings import Settings
from stats.counters import bucket_field
from stats.queries import (
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
    client: Any, keys: Keys, topics: list[tuple[str, int]], now: float
) -> list[dict[str, Any]]:
    """One pipeline for all topics: counters and the `sent` minute buckets of the rate window."""
    minute = int(now // 60)
    fields = [bucket_field("sent", minute - 1), bucket_field("sent", minute)]
    window = RATE_WINDOW_S + (now - minute * 60)
    pipe = client.pipeline(transaction=False)
    for topic, _ in topics:
        for p in keys.partitions:
            pipe.hgetall(p.stats_topic(topic))
            pipe.hmget(p.stats_series(topic), fields)
    replies = iter(await pipe.execute())
    rows = []
    for topic, last_ms in topics:
        counts: Counter[str] = Counter()
        sent_recently = 0
        for _ in keys.partitions:
            counts.update({k: int(v) for k, v in next(replies).items()})
            sent_recently += sum(int(v) for v in next(replies) if v)
        rows.append(topic_row(topic, counts, sent_recently / window, last_ms))
    return rows


async def overview(
    client: Any, keys: Keys, settings: Settings, quota: dict[str, Any], now: float, limit: int
) -> dict[str, Any]:
    totals = summary(await read_counts(client, keys, lambda p: p.stats_global) or Counter())
    sent = totals["sent"]
    topics = await topic_rows(client, keys, await recent_topics(client, keys, limit), now)
    return {
        "generated_at": int(now * 1000),
        "configured_rate": settings.email_rate,
        "send_rate": round(
            await recent_rate(client, keys, lambda p: p.stats_minutely, "sent", now), 3
        ),
        "totals": totals,
        "rates": {
            "delivery": ratio(totals["delivered"], sent),
            "bounce": ratio(totals["bounced"], sent),
            "hard_bounce": ratio(totals["bounced_hard"], sent),
            "complaint": ratio(totals["complained"], sent),
            "open": ratio(totals["opened_unique"], sent),
            "click": ratio(totals["clicked_unique"], sent),
        },
        "queue": await queue_depth(client, keys),
        "quota": quota,
        "topics": topics,
    }
