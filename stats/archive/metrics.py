"""The archive writer's Prometheus metrics, on the stats process's /metrics.

- `sesflow_archive_lag{partition}` / `sesflow_archive_pending{partition}`: events of the
  `archive` group not read yet / read and not yet committed (read from Redis at scrape time;
  absent with ARCHIVE=off, as the group is);
- this process's `sesflow_archive_events_total{type}`, `sesflow_archive_batches_total`,
  `sesflow_archive_database_errors_total` (failed writes, retried),
  `sesflow_archive_dead_lettered_total` and `sesflow_archive_write_seconds` (the last commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sesflow.common.connection import UNAVAILABLE
from sesflow.common.keys import ARCHIVE_GROUP, Keys
from sesflow.common.metrics import RoleMetrics
from sesflow.stats.archive.writer import ArchiveMetrics
from sesflow.stats.queries import find_group, lag_fallback

SCRAPE_TIMEOUT_S = 2.0


class ArchiveCollector:
    def __init__(self, keys: Keys, metrics: ArchiveMetrics | None) -> None:
        self.keys = keys
        self.metrics = metrics
        self.client: Any = None
        self.groups: list[tuple[str, int, int]] = []  # (partition, pending, lag)

    async def refresh(self) -> None:
        try:
            self.groups = await asyncio.wait_for(self._read(), timeout=SCRAPE_TIMEOUT_S)
        except (TimeoutError, *UNAVAILABLE):
            self.groups = []

    async def _read(self) -> list[tuple[str, int, int]]:
        if self.client is None:
            return []
        pipe = self.client.pipeline(transaction=False)
        for p in self.keys.partitions:
            pipe.xinfo_groups(p.events)
        rows = []
        replies = await pipe.execute(raise_on_error=False)
        for p, groups in zip(self.keys.partitions, replies, strict=True):
            group = find_group(groups, ARCHIVE_GROUP)
            if group is None:
                continue
            lag = group.get("lag")
            if lag is None:
                lag = await lag_fallback(self.client, p.events, str(group["last-delivered-id"]))
            rows.append((str(p.index), int(group["pending"]), int(lag or 0)))
        return rows

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "sesflow_archive_pending",
            "Events read by the archive, not yet committed",
            labels=["partition"],
        )
        lag = GaugeMetricFamily(
            "sesflow_archive_lag", "Events the archive has not read yet", labels=["partition"]
        )
        for partition, waiting, behind in self.groups:
            pending.add_metric([partition], waiting)
            lag.add_metric([partition], behind)
        yield pending
        yield lag
        m = self.metrics or ArchiveMetrics()
        for name, doc, n in (
            ("sesflow_archive_batches", "Batches committed by this process", m.batches),
            ("sesflow_archive_database_errors", "Batch writes that failed (retried)",
             m.database_errors),
            ("sesflow_archive_dead_lettered", "Events the archive could not store",
             m.dead_lettered),
        ):  # fmt: skip
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], n)
            yield counter
        events = CounterMetricFamily(
            "sesflow_archive_events", "Events archived by this process, by type", labels=["type"]
        )
        for kind, n in sorted(m.events.items()):
            events.add_metric([kind], n)
        yield events
        last = GaugeMetricFamily("sesflow_archive_write_seconds", "Time of the last commit")
        last.add_metric([], m.last_write_s)
        yield last


def add_archive_metrics(
    app: web.Application,
    metrics: RoleMetrics,
    keys: Keys,
    archive: ArchiveMetrics | None,
    client_of: Callable[[web.Application], Any],
) -> None:
    """Serve the archive's metrics on the app's /metrics; the Redis client is the app's own,
    known once its cleanup context has made it (hence a context of our own, after it)."""
    collector = ArchiveCollector(keys, archive)
    metrics.register(collector, collector.refresh)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        collector.client = client_of(app)
        yield
        collector.client = None

    app.cleanup_ctx.append(ctx)
