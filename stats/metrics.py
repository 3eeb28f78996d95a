"""The stats process's Prometheus metrics (the pattern is `common.metrics`'s): a collector that
reads the pipeline's state from Redis on each scrape.

prometheus-client collectors are synchronous, so `refresh` (awaited by `RoleMetrics` before each
scrape) first takes a snapshot with the async client (bounded by a short timeout), then the
collector renders it. A scrape during a Redis outage still answers,
with `sesflow_redis_up 0`. The stream metrics carry a `partition` label besides the documented
ones (`stream`, `group`); `sesflow_events_total{type}` is what this process applied.

`sesflow_guard_trips_total{reason}` counts the reputation guard's trips made by this process
(`stats.reputation`): a module-level counter, as in every role's metrics module.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sesflow.common.connection import UNAVAILABLE, Redis
from sesflow.common.keys import DISPATCH_GROUP, SENDERS_GROUP, STATS_GROUP, Keys
from sesflow.common.metrics import RoleMetrics
from sesflow.stats.queries import backlog_depth, find_group, lag_fallback

if TYPE_CHECKING:  # aggregate imports the guard, which counts into GUARD_TRIPS below
    from sesflow.stats.aggregate import AggregatorMetrics

SCRAPE_TIMEOUT_S = 2.0

# registry=None: not in prometheus-client's default registry; `role_metrics()` serves it.
GUARD_TRIPS = CounterMetric(
    "sesflow_guard_trips",
    "Reputation guard trips (a topic or all bulk sending paused), by reason",
    ["reason"],
    registry=None,
)
for _reason in ("bounce_rate", "complaint_rate"):  # served at 0 before the first trip
    GUARD_TRIPS.labels(_reason)


class Snapshot:
    def __init__(self) -> None:
        self.up = 0
        self.lengths: list[tuple[str, str, int]] = []  # stream, partition, length
        self.groups: list[tuple[str, str, str, int, int]] = []  # stream, group, part, pend, lag
        self.dead: list[tuple[str, str, int]] = []
        self.scheduled: list[tuple[str, int]] = []
        self.backlogs: list[tuple[str, str, int]] = []  # lane, partition, jobs
        self.events: Counter[str] = Counter()


class PipelineCollector(Collector):
    def __init__(
        self, client: Redis, keys: Keys, consumer: AggregatorMetrics | None = None
    ) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.snapshot = Snapshot()

    async def refresh(self) -> None:
        try:
            self.snapshot = await asyncio.wait_for(self._read(), timeout=SCRAPE_TIMEOUT_S)
        except (TimeoutError, *UNAVAILABLE):
            self.snapshot = Snapshot()

    async def _read(self) -> Snapshot:
        snap = Snapshot()
        streams: list[tuple[str, str, str, str, str]] = [
            ("requests", "g", self.keys.requests, DISPATCH_GROUP, self.keys.requests_dead)
        ]
        for p in self.keys.partitions:
            part = str(p.index)
            streams.append(("sends", part, p.sends, SENDERS_GROUP, p.sends_dead))
            streams.append(("events", part, p.events, STATS_GROUP, p.events_dead))
        pipe = self.client.pipeline(transaction=False)
        for _, _, key, _, dead in streams:
            pipe.xlen(key)
            pipe.xinfo_groups(key)
            pipe.xlen(dead)
        for p in self.keys.partitions:
            pipe.zcard(p.schedule)
            pipe.hgetall(p.stats_global)
        replies = await pipe.execute(raise_on_error=False)
        for i, (name, part, key, group_name, _) in enumerate(streams):
            length, groups, dead = replies[3 * i : 3 * i + 3]
            snap.lengths.append((name, part, _int(length)))
            snap.dead.append((name, part, _int(dead)))
            group = find_group(groups, group_name)
            if group is not None:
                lag = group.get("lag")
                if lag is None:
                    lag = await lag_fallback(self.client, key, str(group["last-delivered-id"]))
                snap.groups.append((name, group_name, part, _int(group["pending"]), _int(lag)))
        rest = replies[3 * len(streams) :]
        for p in self.keys.partitions:
            scheduled, counts = rest[2 * p.index : 2 * p.index + 2]
            snap.scheduled.append((str(p.index), _int(scheduled)))
            if isinstance(counts, dict):
                snap.events.update({k: int(v) for k, v in counts.items()})
        for index, depth in enumerate(await backlog_depth(self.client, self.keys)):
            snap.backlogs.extend((lane, str(index), n) for lane, n in depth.items())
        snap.up = 1
        return snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield _gauge("sesflow_redis_up", "1 when Redis answered this scrape", [], [([], snap.up)])
        labels = ["stream", "partition"]
        yield _gauge("sesflow_stream_length", "Entries in a stream", labels, _rows(snap.lengths))
        yield _gauge(
            "sesflow_dead_letters",
            "Entries in the dead-letter stream of a stream",
            labels,
            _rows(snap.dead),
        )
        glabels = ["stream", "group", "partition"]
        yield _gauge(
            "sesflow_stream_pending",
            "Entries read but not acknowledged",
            glabels,
            [([s, g, p], pend) for s, g, p, pend, _ in snap.groups],
        )
        yield _gauge(
            "sesflow_stream_lag",
            "Entries not yet read by the group",
            glabels,
            [([s, g, p], lag) for s, g, p, _, lag in snap.groups],
        )
        yield _gauge(
            "sesflow_backlog",
            "Jobs waiting for a sender's pump, by lane (paused: the backlogs of paused topics)",
            ["lane", "partition"],
            [([lane, p], n) for lane, p, n in snap.backlogs],
        )
        yield _gauge(
            "sesflow_schedule_size",
            "Scheduled chunks waiting",
            ["partition"],
            [([p], n) for p, n in snap.scheduled],
        )
        counted = CounterMetricFamily(
            "sesflow_counted_events",
            "Events counted in Redis by every stats process, by type (all time)",
            labels=["type"],
        )
        for name, n in sorted(snap.events.items()):
            counted.add_metric([name], n)
        yield counted
        yield from _consumer_metrics(self.consumer)


def _consumer_metrics(c: AggregatorMetrics | None) -> Iterator[Metric]:
    """The consumer's counters; zeros when this app runs beside no consumer."""
    for name, doc, attribute in (
        ("sesflow_stats_batches", "Batches applied by this process", "batches"),
        ("sesflow_stats_dead_lettered", "Malformed events dead-lettered", "dead_lettered"),
        ("sesflow_stats_dropped_batches", "Batches dropped to be re-read", "dropped_batches"),
        ("sesflow_stats_claimed", "Pending events claimed from dead consumers", "claimed"),
        ("sesflow_stats_trimmed", "Events trimmed from the events streams", "trimmed"),
        ("sesflow_stats_redis_waits", "Times the consumer waited for Redis", "redis_reconnects"),
    ):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], getattr(c, attribute) if c is not None else 0)
        yield counter
    applied = CounterMetricFamily(
        "sesflow_events", "Events applied to the counters by this process, by type", labels=["type"]
    )
    for name, n in sorted(c.events.items() if c is not None else []):
        applied.add_metric([name], n)
    yield applied


def _gauge(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], int]]) -> Metric:
    gauge = GaugeMetricFamily(name, doc, labels=labels)
    for values, n in rows:
        gauge.add_metric(values, n)
    return gauge


def _rows(items: list[tuple[str, str, int]]) -> list[tuple[list[str], int]]:
    return [([a, b], n) for a, b, n in items]


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def role_metrics() -> RoleMetrics:
    """The pipeline collector needs the app's Redis client: the app registers it once it has
    one (`RoleMetrics.register(collector, collector.refresh)`)."""
    return RoleMetrics("stats", collectors=(GUARD_TRIPS,))
