"""What the stats process's three consumers of every partition's `events` share (the counters,
the archive, the webhooks' fan-out): a reader of its own per partition, and a flag per partition
saying its own pending list must be read again before anything new (after a start, an error
that dropped the batch in hand, or entries claimed from a dead consumer)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sesflow.common.connection import UNAVAILABLE
from sesflow.common.consumer import StreamConsumer
from sesflow.common.keys import Keys, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.settings import Settings

log = get_logger(__name__)

RECLAIM_PAGES = 100  # pages claimed in one round at most: a big pending list comes back at once


class EventsMetrics:
    """What one such consumer did, for /metrics; each adds its own counters."""

    def __init__(self) -> None:
        self.batches = 0
        self.events: Counter[str] = Counter()
        self.dead_lettered = 0
        self.redis_reconnects = 0


class EventsConsumer(StreamConsumer):
    def __init__(self, client: Any, settings: Settings, *, consumer: str | None = None) -> None:
        super().__init__(client, settings, consumer=consumer)
        self.keys = Keys(settings.redis_prefix, settings.send_partitions)
        self.partitions = {p.events: p for p in self.keys.partitions}
        self._backlog = {p.index: True for p in self.keys.partitions}
        self.metrics = EventsMetrics()

    def streams(self) -> list[str]:
        return list(self.partitions)

    def interrupted(self, stream: str, exc: BaseException) -> None:
        """The batch in hand is gone: read our pending list again before anything new."""
        if isinstance(exc, UNAVAILABLE):
            self.metrics.redis_reconnects += 1
        self._backlog[self.partitions[stream].index] = True

    async def claim_pages(self, stream: str, page: int, min_idle_ms: int | None) -> int:
        """Take over entries a dead consumer left pending, page by page until the cursor wraps
        (RECLAIM_PAGES at most); they are then read from our own pending list. How many."""
        claimed = 0
        for _ in range(RECLAIM_PAGES):
            claimed += len(await self.claim(stream, page, min_idle_ms))
            if self.reclaim_cursor.get(stream, "0-0") == "0-0":
                break
        if claimed:
            p: PartitionKeys = self.partitions[stream]
            self._backlog[p.index] = True
            log.info(f"{self.role}: claimed pending events", partition=p.index, count=claimed)
        return claimed
