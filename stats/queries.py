"""Reading the counters back. Every query is a fixed number of Redis calls per partition (one
pipeline), so it costs the same after ten emails or ten billion."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sesflow.common import scripts
from sesflow.common.connection import Redis
from sesflow.common.keys import SENDERS_GROUP, Keys, PartitionKeys
from sesflow.common.ses_feedback import DELAY_FIELDS
from sesflow.stats.counters import (
    HOURLY_RETENTION_S,
    MINUTELY_RETENTION_S,
    bucket_field,
    hour_of,
)

# The finished states of a recipient; total - these = created (still to send).
FINAL_FIELDS = ("sent", "failed", "stopped", "suppressed", "unknown")
COUNT_FIELDS = (
    "sent",
    "failed",
    "stopped",
    "suppressed",
    "unknown",
    "rejected",
    "delivered",
    "bounced",
    "bounced_hard",
    "bounced_soft",
    "bounced_suppressed",
    "complained",
    "complained_not_spam",
    "complained_suppressed",
    "opened",
    "opened_unique",
    "clicked",
    "clicked_unique",
    "unsubscribed",
    "delivery_delayed",
    *DELAY_FIELDS.values(),
    "ses_rejected",
    "rendering_failed",
)
MAX_POINTS = 1440
# The send rate shown is that of the last few seconds: long enough to smooth the token bucket's
# steps, short enough that idle time before a campaign does not dilute it.
RATE_WINDOW_S = 10


def _pipe(client: Redis) -> Any:
    return client.pipeline(transaction=False)


def _ints(values: Iterable[Any]) -> list[int]:
    return [int(v) if v else 0 for v in values]


async def read_counts(
    client: Redis, keys: Keys, key_of: Callable[[PartitionKeys], str]
) -> Counter[str] | None:
    """The sum over partitions of one counter hash; None when no partition has it."""
    pipe = _pipe(client)
    for p in keys.partitions:
        pipe.hgetall(key_of(p))
    found = False
    total: Counter[str] = Counter()
    for data in await pipe.execute():
        if data:
            found = True
            total.update({name: int(value) for name, value in data.items()})
    return total if found else None


def summary(counts: Counter[str]) -> dict[str, int]:
    """total (= accepted), created (still to send) and every counter, zeros included."""
    count = counts.get  # not Counter's [] : a missing name would go through __missing__
    total = count("accepted", 0)
    finished = sum(count(name, 0) for name in FINAL_FIELDS)
    out = {"total": total, "created": max(0, total - finished)}
    out.update({name: count(name, 0) for name in COUNT_FIELDS})
    return out


async def sum_fields(
    client: Redis, keys: Keys, key_of: Callable[[PartitionKeys], str], fields: list[str]
) -> list[int]:
    """HMGET the same fields from every partition's hash and add them up, field by field."""
    if not fields:
        return []
    pipe = _pipe(client)
    for p in keys.partitions:
        pipe.hmget(key_of(p), fields)
    totals = [0] * len(fields)
    for values in await pipe.execute():
        for i, value in enumerate(_ints(values)):
            totals[i] += value
    return totals


async def count_since(client: Redis, keys: Keys, metric: str, seconds: float, now: float) -> int:
    """How many `metric` events in the last `seconds`: whole hours from the hourly buckets, the
    partial hour at the start from the minute buckets (while they are kept)."""
    start = now - seconds
    first_full_hour = math.ceil(start / 3600)
    hours = [
        hour_of(h * 3600)
        for h in range(first_full_hour, int(now // 3600) + 1)
        if now - h * 3600 < HOURLY_RETENTION_S
    ]
    minutes: list[int] = []
    edge = first_full_hour * 3600 - start
    if edge > 0 and now - start < MINUTELY_RETENTION_S:
        minutes = list(range(int(start // 60), first_full_hour * 60))
    elif edge > 0:
        hours.insert(0, hour_of(start))  # minute data is gone: count that whole hour
    hourly = await sum_fields(
        client, keys, lambda p: p.stats_hourly, [bucket_field(metric, h) for h in hours]
    )
    minutely = await sum_fields(
        client, keys, lambda p: p.stats_minutely, [bucket_field(metric, m) for m in minutes]
    )
    return sum(hourly) + sum(minutely)


class SeriesQuery:
    """A validated time-series request: points at `start + k*step` up to `end`."""

    def __init__(self, metric: str, topic: str, start: int, end: int, step: int) -> None:
        self.metric, self.topic, self.start, self.end, self.step = metric, topic, start, end, step

    @property
    def hourly(self) -> bool:
        return self.step % 3600 == 0 and not self.topic


def plan_series(
    metric: str, topic: str, start: float, end: float, step: int, now: float
) -> SeriesQuery:
    """Choose buckets and widen the step so the answer stays within MAX_POINTS points.

    Minute buckets cover the last 48 hours (per topic too); older ranges use the hourly buckets,
    which exist for the global counters only. Raises ValueError with a reason for the client."""
    if end <= start:
        raise ValueError("'from' must be before 'to'")
    if step < 60:
        raise ValueError("step must be at least 60 seconds")
    end = min(end, now)
    step = math.ceil(step / 60) * 60
    if start < now - MINUTELY_RETENTION_S + 60:
        if topic:
            raise ValueError("per-topic series cover the last 48 hours")
        step = max(3600, math.ceil(step / 3600) * 3600)
        start = max(start, now - HOURLY_RETENTION_S)
    while (end - start) / step + 1 > MAX_POINTS:
        step *= 2
    first = int(start // step * step)
    return SeriesQuery(metric, topic, first, int(end), step)


async def series(client: Redis, keys: Keys, q: SeriesQuery, now: float) -> list[tuple[int, int]]:
    """(point time in epoch seconds, value) for each point of the query.

    A point at t sums the buckets in [t, t + step), clipped to the retention and to `end`, so the
    number of fields read stays bounded whatever the step."""
    unit = 3600 if q.hourly else 60
    retention = HOURLY_RETENTION_S if q.hourly else MINUTELY_RETENTION_S
    low = int((now - retention) // unit)
    high = q.end // unit
    points = list(range(q.start, q.end + 1, q.step))
    owners: list[int] = []
    names: list[str] = []
    for k, t in enumerate(points):
        for u in range(max(t // unit, low), min((t + q.step) // unit, high + 1)):
            owners.append(k)
            names.append(bucket_field(q.metric, hour_of(u * 3600) if q.hourly else u))
    topic = q.topic
    key_of: Callable[[PartitionKeys], str]
    if q.hourly:
        key_of = lambda p: p.stats_hourly  # noqa: E731
    elif topic:
        key_of = lambda p: p.stats_series(topic)  # noqa: E731
    else:
        key_of = lambda p: p.stats_minutely  # noqa: E731
    sums = [0] * len(points)
    for k, value in zip(owners, await sum_fields(client, keys, key_of, names), strict=True):
        sums[k] += value
    return list(zip(points, sums, strict=True))


def settle_s(flush_interval: float) -> int:
    """Seconds to leave out at the end of a live window: stats applies what it read within
    STATS_FLUSH_INTERVAL, so a second younger than this may still be filling."""
    return math.ceil(max(0.0, flush_interval)) + 1


def rate_seconds(now: float, settle: int) -> list[int]:
    """The RATE_WINDOW_S whole seconds of the live send rate, ending `settle` seconds ago."""
    end = int(now) - settle
    return list(range(end - RATE_WINDOW_S, end))


async def sent_per_second(
    client: Redis, keys: Keys, seconds: list[int], topic: str = ""
) -> list[int]:
    """`sent` in each of `seconds` (of every topic, or of `topic`), summed over the partitions:
    one HMGET per minute spanned per partition, so the cost follows the number of seconds."""
    if not seconds:
        return []
    minutes: dict[int, list[int]] = {}
    for second in seconds:
        minutes.setdefault(second // 60, []).append(second)
    pipe = _pipe(client)
    for p in keys.partitions:
        for minute, group in minutes.items():
            pipe.hmget(p.stats_seconds(minute, topic), [str(s) for s in group])
    replies = iter(await pipe.execute())
    totals = dict.fromkeys(seconds, 0)
    for _ in keys.partitions:
        for group in minutes.values():
            for second, value in zip(group, _ints(next(replies)), strict=True):
                totals[second] += value
    return [totals[second] for second in seconds]


async def send_rate(client: Redis, keys: Keys, now: float, settle: int) -> float:
    """Recipients sent per second over the rate window (by the time SES accepted them)."""
    seconds = rate_seconds(now, settle)
    return sum(await sent_per_second(client, keys, seconds)) / len(seconds)


async def recent_topics(client: Redis, keys: Keys, limit: int) -> list[tuple[str, int]]:
    """The `limit` most recently active topics, newest first, with their last activity (ms)."""
    pipe = _pipe(client)
    for p in keys.partitions:
        pipe.zrevrange(p.stats_topics, 0, limit - 1, withscores=True)
    latest: dict[str, int] = {}
    for rows in await pipe.execute():
        for topic, score in rows:
            latest[topic] = max(latest.get(topic, 0), int(score))
    return sorted(latest.items(), key=lambda kv: kv[1], reverse=True)[:limit]


LANES = ("transactional", "bulk", "paused")


async def backlog_depth(client: Redis, keys: Keys) -> list[dict[str, int]]:
    """Per partition, the jobs waiting for the pump by lane: `transactional`, `bulk` and the
    bulk of `paused` topics."""
    script = scripts.register(client, "backlog_depth")
    depths = []
    for p in keys.partitions:
        reply = await script(keys=p.backlog_depth_keys(), args=[f"{p.prefix}backlog:"])
        depths.append(dict(zip(LANES, (int(n) for n in reply), strict=True)))
    return depths


def lane_rows(depth: dict[str, int]) -> list[dict[str, Any]]:
    """`queue.lanes`: one row per lane, in LANES order, `{"lane", "queued"}`."""
    return [{"lane": lane, "queued": depth[lane]} for lane in LANES]


async def queue_depth(client: Redis, keys: Keys) -> dict[str, Any]:
    """Jobs not sent yet: waiting for the pump in a backlog (`lanes`, by lane), on `sends` (`lag`:
    not yet read, `pending`: read but unacknowledged; already pumped, of any lane), and
    `scheduled` chunks (not split by lane: a chunk joins its lane's backlog when due). `queued`
    is all but the scheduled: the lanes plus lag and pending."""
    pipe = _pipe(client)
    for p in keys.partitions:
        pipe.xlen(p.sends)
        pipe.xinfo_groups(p.sends)
        pipe.zcard(p.schedule)
    replies = await pipe.execute(raise_on_error=False)
    backlogs = await backlog_depth(client, keys)
    partitions: list[dict[str, Any]] = []
    for p in keys.partitions:
        length, groups, scheduled = replies[3 * p.index : 3 * p.index + 3]
        length = length if isinstance(length, int) else 0
        scheduled = scheduled if isinstance(scheduled, int) else 0
        group = find_group(groups, SENDERS_GROUP)
        pending = int(group.get("pending") or 0) if group else 0
        lag = group.get("lag") if group else length
        if lag is None and group is not None:
            lag = await lag_fallback(client, p.sends, str(group["last-delivered-id"]))
        partitions.append(
            {
                "partition": p.index,
                "length": length,
                "pending": pending,
                "lag": int(lag or 0),
                "scheduled": scheduled,
                "lanes": lane_rows(backlogs[p.index]),
            }
        )
    lanes = {lane: sum(depth[lane] for depth in backlogs) for lane in LANES}
    return {
        "queued": sum(x["lag"] + x["pending"] for x in partitions) + sum(lanes.values()),
        "pending": sum(x["pending"] for x in partitions),
        "lag": sum(x["lag"] for x in partitions),
        "scheduled": sum(x["scheduled"] for x in partitions),
        "length": sum(x["length"] for x in partitions),
        "lanes": lane_rows(lanes),
        "partitions": partitions,
    }


LAG_FALLBACK_CAP = 10_000


async def lag_fallback(client: Redis, stream: str, last_delivered: str) -> int:
    """Redis < 7 has no group lag: count undelivered entries in Redis, up to a cap."""
    script = scripts.register(client, "stream_lag")
    return int(await script(keys=[stream], args=[last_delivered, LAG_FALLBACK_CAP]))


def find_group(groups: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(groups, list):
        return None
    for group in groups:
        if group.get("name") == name:
            return dict(group)
    return None


def now_s() -> float:
    return time.time()
