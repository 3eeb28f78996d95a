"""The archive writer: consumer group `archive` on every partition's `events` stream.

A reader per partition gathers up to ARCHIVE_BATCH_SIZE entries (or what came within
STATS_FLUSH_INTERVAL) into an `ArchiveBatch`, reads the subject and lane of the batch's newly
accepted messages from their content hashes, writes the batch in ONE database transaction
(`store.write_batch`) and only then XACKs it (with the archive's own dead letters, in one
MULTI/EXEC). Invariants:

- nothing is acknowledged before its transaction committed: a crash between the commit and the
  XACK redelivers the batch, which the unique (partition, entry id) and the idempotent upserts
  make harmless: every event is archived exactly once;
- a database outage stalls the partition (the batch in hand is retried with a growing pause,
  logged, nothing acknowledged) and never ends the loop; a stop during the stall leaves the
  entries pending for the next start;
- entries stats dead-letters are acknowledged without a second dead letter (see `batch`).

Reclaim, trim and forgetting idle consumers are `StreamConsumer`'s upkeep; the group is created
at id 0, so an upgrade archives what is still in the stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sesflow.common.consumer import sleep_or_stop
from sesflow.common.errors import ArchiveUnavailable
from sesflow.common.keys import ARCHIVE_GROUP, PartitionKeys, is_decimal
from sesflow.common.logs import get_logger
from sesflow.common.schema import BULK
from sesflow.common.scripts import register
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import DEAD_LETTER_MAXLEN
from sesflow.stats.archive.batch import ArchiveBatch, clean
from sesflow.stats.archive.db import Database
from sesflow.stats.archive.store import MessageMeta, write_batch
from sesflow.stats.events_consumer import EventsConsumer, EventsMetrics

log = get_logger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


class ArchiveMetrics(EventsMetrics):
    """What this process archived, exported on /metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0
        self.database_errors = 0
        self.last_write_s = 0.0


class ArchiveWriter(EventsConsumer):
    """Give it a `stats_client` (no automatic retries) and a connected `Database`."""

    metrics: ArchiveMetrics

    group = ARCHIVE_GROUP
    role = "archive"

    def __init__(
        self, client: Any, settings: Settings, db: Database, *, consumer: str | None = None
    ) -> None:
        super().__init__(client, settings, consumer=consumer)
        self.db = db
        self._read = register(self.client, "stats_read")
        self.batch_size = max(1, settings.archive_batch_size)
        self.flush_interval = max(0.01, settings.stats_flush_interval)
        self.metrics = ArchiveMetrics()

    async def reclaim(self, stream: str, *, min_idle_ms: int | None = None) -> int:
        return await self.claim_pages(stream, self.batch_size, min_idle_ms)

    # --- consuming ----------------------------------------------------------------------------

    async def consume(self, stream: str) -> None:
        """Read and store batches until stopped, then store the batch in hand. While one batch
        is written (the database works on its own thread or server), the next one is read and
        prepared: at most one write in flight per partition, awaited before the next starts
        and before our pending list is read again (it still holds the entries in flight)."""
        p = self.partitions[stream]
        batch = ArchiveBatch(p.index)
        writing: asyncio.Task[bool] | None = None
        try:
            while True:
                if self.stop.is_set():
                    await self.finish(writing)
                    await self.store(p, batch)
                    return
                if self._backlog[p.index]:
                    await self.finish(writing)
                    writing = None
                    if not batch:
                        batch = await self.read_batch(p, "0", self.batch_size, None)
                        if not batch:
                            self._backlog[p.index] = False
                            continue
                    await self.store(p, batch)
                    batch = ArchiveBatch(p.index)
                    continue
                wait_s = self.flush_interval
                if batch:
                    wait_s = batch.first_read + self.flush_interval - time.monotonic()
                block = max(1, int(wait_s * 1000))
                batch = await self.read_batch(p, ">", self.batch_size - len(batch), block, batch)
                full = len(batch) >= self.batch_size
                if full or (batch and time.monotonic() - batch.first_read >= self.flush_interval):
                    await self.finish(writing)
                    writing = asyncio.create_task(self.store(p, batch))
                    batch = ArchiveBatch(p.index)
        finally:
            if writing is not None:  # a failure of ours: the write in flight goes too
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)

    @staticmethod
    async def finish(writing: asyncio.Task[bool] | None) -> None:
        """Wait for the write in flight (its failure is ours)."""
        if writing is not None:
            await writing

    async def read_batch(
        self,
        p: PartitionKeys,
        start: str,
        count: int,
        block: int | None,
        batch: ArchiveBatch | None = None,
    ) -> ArchiveBatch:
        batch = ArchiveBatch(p.index) if batch is None else batch
        entries = await self.read(p.events, start, count, block)
        if entries and not batch:
            batch.first_read = time.monotonic()
        for entry_id, fields in entries:
            batch.add(entry_id, fields)
        return batch

    async def store(self, p: PartitionKeys, batch: ArchiveBatch) -> bool:
        """Write `batch` (retrying while the database is down), then acknowledge it. False
        when `stop` came during a stall: the entries stay pending."""
        if not batch:
            return True
        try:
            meta = await self.message_meta(p, batch)
            if not await self.commit(p, batch, meta):
                return False
            await self.acknowledge(p, batch)
        except BaseException:
            self._backlog[p.index] = True
            raise
        self.metrics.batches += 1
        self.metrics.skipped += len(batch.skipped)
        self.metrics.dead_lettered += len(batch.dead)
        for row in batch.events:
            self.metrics.events[row[3]] += 1
        return True

    async def commit(self, p: PartitionKeys, batch: ArchiveBatch, meta: Any) -> bool:
        pause = RETRY_FIRST_S
        while True:
            started = time.monotonic()
            try:
                async with self.db.transaction() as tx:
                    await write_batch(tx, batch, meta)
            except ArchiveUnavailable as exc:
                self.metrics.database_errors += 1
                log.warning(
                    "archive database unavailable; retrying the batch",
                    partition=p.index,
                    entries=len(batch),
                    error=str(exc)[:500],
                    retry_in_s=pause,
                )
                if await sleep_or_stop(self.stop, pause):
                    self._backlog[p.index] = True
                    return False
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            self.metrics.last_write_s = time.monotonic() - started
            return True

    async def message_meta(self, p: PartitionKeys, batch: ArchiveBatch) -> dict[str, MessageMeta]:
        """Subject, lane and scheduled time of the batch's accepted messages, from their content
        hashes (gone once CONTENT_TTL passed: then they stay empty)."""
        if not batch.accepted:
            return {}
        # One script call for the lot (stats_read.lua), not one HMGET each: redis-py packs and
        # parses every command of a pipeline in Python, and a batch of thousands of accepted
        # messages held the event loop (and the API sharing it) for over 100 ms.
        meta = {}
        replies = await self._read(
            keys=[p.message(accepted.msg_id) for accepted in batch.accepted],
            args=[0, 0, "subject", "lane", "scheduled_ms"],  # none read whole, no list: HMGET
        )
        for accepted, (subject, lane, scheduled) in zip(batch.accepted, replies, strict=True):
            meta[accepted.msg_id] = MessageMeta(
                subject=clean(subject or ""),
                lane=clean(lane or "") or BULK,
                scheduled_at_ms=int(scheduled) if is_decimal(scheduled or "") else None,
            )
        return meta

    async def acknowledge(self, p: PartitionKeys, batch: ArchiveBatch) -> None:
        tx = self.client.pipeline(transaction=True)
        for entry_id, fields, reason in batch.dead:
            dead = {**{k: str(v) for k, v in fields.items()}, "id": entry_id, "reason": reason}
            tx.xadd(p.events_dead, dead, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        tx.xack(p.events, self.group, *batch.ids)
        await tx.execute()
        for entry_id, _, reason in batch.dead:
            log.warning("event dead-lettered", partition=p.index, id=entry_id, reason=reason)
        for entry_id, reason in batch.skipped:
            log.info("malformed event not archived", partition=p.index, id=entry_id, why=reason)
