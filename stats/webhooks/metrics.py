"""The webhook metrics on the stats role's /metrics:

- `sesflow_webhook_deliveries_total{outcome}`: delivered, retried (a failed attempt, tried
  again later), dead (dead-lettered), dropped (its endpoint was deleted);
- `sesflow_webhook_delivery_seconds`: the latency of each call;
- `sesflow_webhook_backlog{endpoint}`: deliveries waiting per endpoint (every partition, read
  from Redis at each scrape).

The first two are module-level, like every role's counters (registry=None: `register` adds
them to the app's registry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sesflow.common.connection import UNAVAILABLE
from sesflow.common.keys import Keys
from sesflow.common.metrics import RoleMetrics

OUTCOMES = ("delivered", "retried", "dead", "dropped")
SCRAPE_TIMEOUT_S = 2.0

DELIVERIES = Counter(
    "sesflow_webhook_deliveries",
    "Webhook delivery attempts settled by this process, by outcome",
    ["outcome"],
    registry=None,
)
for _outcome in OUTCOMES:  # served at 0 before the first delivery
    DELIVERIES.labels(_outcome)
LATENCY = Histogram(
    "sesflow_webhook_delivery_seconds",
    "Time of one webhook call (to the answer, a failure or the timeout)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=None,
)


class BacklogCollector(Collector):
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.backlog: dict[str, int] = {}

    async def refresh(self) -> None:
        try:
            self.backlog = await asyncio.wait_for(self._read(), SCRAPE_TIMEOUT_S)
        except (TimeoutError, *UNAVAILABLE):
            self.backlog = {}

    async def _read(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for p in self.keys.partitions:
            pipe.hgetall(p.webhook_backlog)
        totals: dict[str, int] = {}
        for counts in await pipe.execute():
            for endpoint, n in (counts or {}).items():
                totals[endpoint] = totals.get(endpoint, 0) + int(n)
        return totals

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "sesflow_webhook_backlog",
            "Webhook deliveries waiting, per endpoint",
            labels=["endpoint"],
        )
        for endpoint, n in sorted(self.backlog.items()):
            gauge.add_metric([endpoint], max(0, n))
        yield gauge


def register(role_metrics: RoleMetrics, client: Any, keys: Keys) -> None:
    role_metrics.register(DELIVERIES)
    role_metrics.register(LATENCY)
    backlog = BacklogCollector(client, keys)
    role_metrics.register(backlog, backlog.refresh)
