"""The stats consumer: group `stats` on every partition's `events` stream.

Exactly-once counting. Entries are read into a batch (up to STATS_BATCH_SIZE, or what arrived
within STATS_FLUSH_INTERVAL), summed in Python, then the counter updates AND the XACK of those
entries go to Redis in one MULTI/EXEC per partition (every key of a partition shares its hash
tag). Either both happen or neither does:

- a crash before EXEC leaves the entries pending: they are read again (from this consumer's own
  pending list, or claimed with XAUTOCLAIM from a dead consumer) and counted then;
- after any error around EXEC (its reply may have been lost) the batch in memory is dropped and
  the pending list is read again: entries that EXEC acknowledged are no longer there, so they
  are never counted twice. The client that runs EXEC never retries on its own for that reason;
- a batch held longer than half the claim idle time is dropped instead of applied, because
  another consumer may have claimed its entries in the meantime.

The per-second `sent` hashes behind the live send rate are written in the same transaction; each
expires on its own (see `counters.py`), so nothing has to prune them.

Malformed entries go to `events:dead` with the reason and are acknowledged in the same
transaction. Upkeep: reclaim, trim `events` below the oldest entry still pending, prune old time
buckets, forget topics idle for longer than STATS_RETENTION (their counters, series and index
entry). A Redis outage only pauses the loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from sesflow.common.connection import UNAVAILABLE, connect, ensure_group, wait_for_redis
from sesflow.common.keys import STATS_GROUP, Keys, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.scripts import register
from sesflow.common.settings import Settings
from sesflow.common.streams import trim_acknowledged
from sesflow.stats.counters import (
    HOURLY_RETENTION_S,
    MINUTELY_RETENTION_S,
    SERIES_TTL_S,
    PartitionBatch,
    hour_of,
    split_bucket_field,
)

log = get_logger(__name__)

DEAD_LETTER_MAXLEN = 100_000
PRUNE_EVERY_S = 600.0
TRIM_EVERY_S = 30.0
FORGET_CONSUMER_IDLE_MS = 3600 * 1000
MAX_BLOCK_MS = 1000
FORGET_BATCH = 500  # idle topics forgotten per script call


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class ConsumerStats:
    """Counters of this process, exported on /metrics."""

    def __init__(self) -> None:
        self.batches = 0
        self.events: Counter[str] = Counter()
        self.dead_lettered = 0
        self.dropped_batches = 0
        self.redis_reconnects = 0
        self.claimed = 0
        self.trimmed = 0


class StatsConsumer:
    def __init__(self, settings: Settings, client: Any | None = None, name: str = "") -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix, settings.send_partitions)
        # No automatic retry: a retried EXEC whose first reply was lost would count twice.
        # surrogateescape: an entry holding bytes that are not UTF-8 must not make the whole
        # XREADGROUP reply undecodable (the partition stopped being counted); it is
        # dead-lettered instead, written back byte for byte.
        self.client = client or connect(
            settings, retry=Retry(NoBackoff(), 0), encoding_errors="surrogateescape"
        )
        self._owns_client = client is None
        self._forget = register(self.client, "forget_topics")
        self.name = name or consumer_name()
        self.batch_size = max(1, settings.stats_batch_size)
        self.flush_interval = max(0.01, settings.stats_flush_interval)
        self.claim_idle = max(settings.reclaim_idle, 3 * self.flush_interval)
        self.stop_event = asyncio.Event()
        self.stats = ConsumerStats()
        # Set when this consumer's own pending list must be read again (start, error, claim).
        self._backlog = {p.index: True for p in self.keys.partitions}
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for p in self.keys.partitions:
            self._tasks.append(asyncio.create_task(self._consume(p), name=f"stats-{p.index}"))
        self._tasks.append(asyncio.create_task(self._upkeep(), name="stats-upkeep"))

    def stop(self) -> None:
        self.stop_event.set()

    async def close(self, grace: float | None = None) -> None:
        """Stop reading, apply the batches in hand (within the grace period), then close."""
        self.stop()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace or self.settings.shutdown_grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        if self._owns_client:
            await self.client.aclose()

    async def run(self) -> None:
        """Run until `stop()`; convenient for tests and single-role processes."""
        await self.start()
        await self.stop_event.wait()
        await self.close()

    # --- consuming ----------------------------------------------------------------------------

    async def _consume(self, p: PartitionKeys) -> None:
        while not self.stop_event.is_set():
            try:
                await ensure_group(self.client, p.events, STATS_GROUP)
                await self._consume_ready(p)
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                self.stats.redis_reconnects += 1
                log.warning("redis unavailable, stats paused", partition=p.index, error=str(exc))
                self._backlog[p.index] = True
                await wait_for_redis(self.client, self.stop_event, log)
            except Exception:
                log.exception("stats loop error; retrying", partition=p.index)
                self._backlog[p.index] = True
                await self._sleep(1.0)

    async def _consume_ready(self, p: PartitionKeys) -> None:
        """Read and apply batches until stopped; any error drops the batch in hand."""
        batch = PartitionBatch()
        while True:
            if self.stop_event.is_set():
                await self.apply(p, batch)
                return
            if self._backlog[p.index]:
                # Our pending list holds the entries of the batch in hand too: apply it first,
                # then each read of the pending list is applied at once (so none is read twice).
                if not batch:
                    batch = await self._read(p, "0", self.batch_size, None)
                    if not batch:
                        self._backlog[p.index] = False
                        continue
                await self.apply(p, batch)
                batch = PartitionBatch()
                continue
            wait_s = self.flush_interval
            if batch:
                wait_s = batch.first_read + self.flush_interval - time.monotonic()
            # Capped: a stop is noticed within a second and the read stays under socket timeouts.
            block = max(1, min(MAX_BLOCK_MS, int(wait_s * 1000)))
            batch = await self._read(p, ">", self.batch_size - len(batch), block, batch)
            full = len(batch) >= self.batch_size
            if full or (batch and time.monotonic() - batch.first_read >= self.flush_interval):
                await self.apply(p, batch)
                batch = PartitionBatch()

    async def _read(
        self,
        p: PartitionKeys,
        start: str,
        count: int,
        block: int | None,
        batch: PartitionBatch | None = None,
    ) -> PartitionBatch:
        batch = PartitionBatch() if batch is None else batch
        reply = await self.client.xreadgroup(
            STATS_GROUP, self.name, {p.events: start}, count=count, block=block
        )
        for entry_id, fields in reply[0][1] if reply else []:
            batch.add(entry_id, fields)
        return batch

    async def apply(self, p: PartitionKeys, batch: PartitionBatch) -> bool:
        """Counters + dead letters + XACK in one MULTI/EXEC. False when the batch was dropped."""
        if not batch:
            return True
        if time.monotonic() - batch.first_read > self.claim_idle / 2:
            # Another consumer may have claimed these entries; read our pending list again.
            self.stats.dropped_batches += 1
            self._backlog[p.index] = True
            log.warning("stale stats batch dropped", partition=p.index, entries=len(batch))
            return False
        try:
            await self._transaction(p, batch).execute()
        except BaseException:
            self._backlog[p.index] = True
            raise
        self.stats.batches += 1
        self.stats.events.update(batch.events)
        self.stats.dead_lettered += len(batch.dead)
        for entry_id, _, reason in batch.dead:
            log.warning("event dead-lettered", partition=p.index, id=entry_id, reason=reason)
        return True

    def _transaction(self, p: PartitionKeys, batch: PartitionBatch) -> Any:
        tx = self.client.pipeline(transaction=True)
        for name, n in batch.global_.items():
            tx.hincrby(p.stats_global, name, n)
        for topic, counts in batch.topics.items():
            for name, n in counts.items():
                tx.hincrby(p.stats_topic(topic), name, n)
        for name, n in batch.hourly.items():
            tx.hincrby(p.stats_hourly, name, n)
        for name, n in batch.minutely.items():
            tx.hincrby(p.stats_minutely, name, n)
        for topic, counts in batch.series.items():
            for name, n in counts.items():
                tx.hincrby(p.stats_series(topic), name, n)
            tx.expire(p.stats_series(topic), SERIES_TTL_S)
        for key, seconds, expire_at in batch.second_writes(p, time.time()):
            for second, n in seconds.items():
                tx.hincrby(key, second, n)
            tx.expireat(key, expire_at)
        if batch.last_seen:
            tx.zadd(p.stats_topics, batch.last_seen, gt=True)
        for entry_id, fields, reason in batch.dead:
            dead = {**{k: str(v) for k, v in fields.items()}, "id": entry_id, "reason": reason}
            tx.xadd(p.events_dead, dead, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        tx.xack(p.events, STATS_GROUP, *batch.ids)
        return tx

    # --- upkeep -------------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        reclaim_every = min(max(self.claim_idle / 2, 0.05), 30.0)
        last_trim = last_prune = 0.0
        while not self.stop_event.is_set():
            await self._sleep(reclaim_every)
            if self.stop_event.is_set():
                return
            now = time.monotonic()
            for p in self.keys.partitions:
                try:
                    await self.reclaim(p)
                    if now - last_trim >= TRIM_EVERY_S:
                        await self.trim(p)
                    if now - last_prune >= PRUNE_EVERY_S:
                        await self.prune(p)
                        await self.forget_idle_topics(p)
                except asyncio.CancelledError:
                    raise
                except (*UNAVAILABLE, RedisError) as exc:
                    log.warning("stats upkeep failed", partition=p.index, error=str(exc))
                except Exception:  # upkeep must outlive its own bugs: log and go on
                    log.exception("stats upkeep error", partition=p.index)
            if now - last_trim >= TRIM_EVERY_S:
                last_trim = now
            if now - last_prune >= PRUNE_EVERY_S:
                last_prune = now

    async def reclaim(self, p: PartitionKeys) -> int:
        """Take over entries a dead consumer left pending; forget long-idle empty consumers."""
        claimed = 0
        start = "0-0"
        for _ in range(100):  # bounded: a huge pending list is finished on the next rounds
            try:
                reply = await self.client.xautoclaim(
                    p.events,
                    STATS_GROUP,
                    self.name,
                    int(self.claim_idle * 1000),
                    start_id=start,
                    count=self.batch_size,
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return 0
                raise
            # Not JUSTID: redis-py then drops the cursor needed to page through.
            start = reply[0]
            claimed += len(reply[1])
            if start == "0-0":
                break
        if claimed:
            self.stats.claimed += claimed
            self._backlog[p.index] = True
            log.info("claimed pending events", partition=p.index, count=claimed)
        for consumer in await self.client.xinfo_consumers(p.events, STATS_GROUP):
            idle = int(consumer.get("idle", 0))
            forgettable = consumer["pending"] == 0 and idle > FORGET_CONSUMER_IDLE_MS
            if consumer["name"] != self.name and forgettable:
                await self.client.xgroup_delconsumer(p.events, STATS_GROUP, consumer["name"])
        return claimed

    async def trim(self, p: PartitionKeys) -> int:
        """Remove entries every group has read and acknowledged (never a pending one)."""
        removed = await trim_acknowledged(self.client, p.events)
        self.stats.trimmed += removed
        return removed

    async def prune(self, p: PartitionKeys, now: float | None = None) -> int:
        """Drop hourly buckets older than ~35 days and minute buckets older than ~48 hours."""
        now = time.time() if now is None else now
        oldest_hour = hour_of(now - HOURLY_RETENTION_S)
        oldest_minute = int((now - MINUTELY_RETENTION_S) // 60)
        removed = await self._prune_hash(p.stats_hourly, lambda b: b < oldest_hour)
        removed += await self._prune_hash(
            p.stats_minutely, lambda b: not b.isdigit() or int(b) < oldest_minute
        )
        recent_ms = int((now - MINUTELY_RETENTION_S) * 1000)
        for topic in await self.client.zrangebyscore(p.stats_topics, recent_ms, "+inf"):
            removed += await self._prune_hash(
                p.stats_series(topic), lambda b: not b.isdigit() or int(b) < oldest_minute
            )
        return removed

    async def forget_idle_topics(self, p: PartitionKeys, now: float | None = None) -> int:
        """Delete the counters and series of topics with no event for STATS_RETENTION, and
        trim them from the topic index; returns how many topics went."""
        now = time.time() if now is None else now
        cutoff_ms = int((now - self.settings.stats_retention) * 1000)
        forgotten = 0
        while True:
            idle = await self.client.zrangebyscore(
                p.stats_topics, "-inf", f"({cutoff_ms}", start=0, num=FORGET_BATCH
            )
            if not idle:
                return forgotten
            keys = [p.stats_topics]
            for topic in idle:
                keys += [p.stats_topic(topic), p.stats_series(topic)]
            forgotten += int(await self._forget(keys=keys, args=[cutoff_ms, *idle]))
            if len(idle) < FORGET_BATCH:
                return forgotten

    async def _prune_hash(self, key: str, is_old: Any) -> int:
        # HSCAN without NOVALUES: that option needs Redis 7.4.
        old = [
            name
            async for name, _ in self.client.hscan_iter(key, count=1000)
            if is_old(split_bucket_field(name)[1])
        ]
        removed = 0
        for start in range(0, len(old), 1000):
            removed += int(await self.client.hdel(key, *old[start : start + 1000]))
        return removed

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
