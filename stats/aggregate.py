"""The stats consumer: group `stats` on every partition's `events` stream.

Exactly-once counting. Entries are read into a batch (up to STATS_BATCH_SIZE, or what arrived
within STATS_FLUSH_INTERVAL), summed in Python, then the counter updates AND the XACK of those
entries go to Redis in one script call per partition (`apply_counts.lua`; every key of a
partition shares its hash tag). One command, not one per counter: a batch spread over many
topics and time buckets adds to thousands of fields, and redis-py packs and parses each command
in Python. Either both happen or neither does:

- a crash before the call leaves the entries pending: they are read again (from this consumer's
  own pending list, or claimed with XAUTOCLAIM from a dead consumer) and counted then;
- after any error around the call (its reply may have been lost) the batch in memory is dropped
  and the pending list is read again: entries the script acknowledged are no longer there, so
  they are never counted twice. The client never retries a call on its own for that reason;
- a batch held longer than half the claim idle time is dropped instead of applied, because
  another consumer may have claimed its entries in the meantime.

The per-second `sent` hashes behind the live send rate are written in the same call; each
expires on its own (see `counters.py`), so nothing has to prune them. The reputation guard
(`stats.reputation`) reads what it judges at the end of that same call, and pauses a topic after
the batch is applied.

Malformed entries go to `events:dead` with the reason and are acknowledged in the same
call. The reading, the shutdown and the upkeep are `common.consumer.StreamConsumer`'s, the
upkeep: reclaim, trim `events` below the oldest entry still pending, forget consumers long gone,
prune old time buckets, forget topics idle for longer than STATS_RETENTION (their counters,
series and index entry). A Redis outage only pauses the loops. At shutdown the batch in hand is
applied within SHUTDOWN_GRACE.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sesflow.common.consumer import FORGET_EVERY_S, Upkeep, consumer_client
from sesflow.common.keys import STATS_GROUP, PartitionKeys
from sesflow.common.logs import get_logger
from sesflow.common.scripts import register
from sesflow.common.settings import Settings
from sesflow.stats.counters import (
    HOURLY_RETENTION_S,
    MINUTELY_RETENTION_S,
    SERIES_TTL_S,
    PartitionBatch,
    hour_of,
    split_bucket_field,
)
from sesflow.stats.events_consumer import EventsConsumer, EventsMetrics
from sesflow.stats.reputation import ReputationGuard

log = get_logger(__name__)

DEAD_LETTER_MAXLEN = 100_000
# A dead letter keeps this many of its entry's fields at most: the script unpacks XADD's arguments
# on Lua's stack (8,000 at most), and a poison entry must not stop its partition's counting.
DEAD_LETTER_FIELDS = 1000
PRUNE_INTERVAL_S = 600.0
# `events` is trimmed to the oldest entry any of its groups (stats, archive, webhooks) still
# needs this often: what every group has acknowledged leaves Redis within seconds (an XINFO
# GROUPS and an XTRIM per partition, nothing to a busy stream).
TRIM_INTERVAL_S = 5.0
FORGET_BATCH = 500  # idle topics forgotten per script call


def stats_client(settings: Settings) -> Any:
    """No automatic retry: a retried batch whose first reply was lost would count twice. And
    surrogateescape (`consumer_client`): an entry holding bytes that are not UTF-8 must not make
    the whole XREADGROUP reply undecodable (the partition stopped being counted); it is
    dead-lettered instead, written back byte for byte."""
    return consumer_client(settings, retry=Retry(NoBackoff(), 0))


def counter_increments(p: PartitionKeys, batch: PartitionBatch) -> Iterator[tuple[str, str, int]]:
    """Every counter a batch adds to: (hash key, field, n)."""
    yield from ((p.stats_global, name, n) for name, n in batch.global_.items())
    yield from ((p.stats_hourly, name, n) for name, n in batch.hourly.items())
    yield from ((p.stats_minutely, name, n) for name, n in batch.minutely.items())
    for topic, counts in batch.topics.items():
        yield from ((p.stats_topic(topic), name, n) for name, n in counts.items())
    for topic, counts in batch.series.items():
        yield from ((p.stats_series(topic), name, n) for name, n in counts.items())


class CountsCall:
    """The arguments of one `apply_counts.lua` call (a batch of one partition): each hash key
    once in KEYS, then the sections the script reads in order. The reputation guard queues its
    reads here as it would on a pipeline (`hmget`)."""

    def __init__(self, p: PartitionKeys) -> None:
        self.keys = [p.events, p.events_dead, p.stats_topics]
        self._index: dict[str, int] = {}
        self.increments: list[Any] = []
        self.expiries: list[Any] = []
        self.expire_ats: list[Any] = []
        self.seen: list[Any] = []
        self.dead: list[Any] = []
        self.dead_count = 0
        self.reads: list[Any] = []
        self.read_count = 0
        self.acks: list[str] = []

    def key(self, name: str) -> int:
        """The 1-based index of `name` in KEYS."""
        index = self._index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._index[name] = len(self.keys)
        return index

    def hincrby(self, key: str, field: str, n: int) -> None:
        self.increments += (self.key(key), field, n)

    def expire(self, key: str, seconds: int) -> None:
        self.expiries += (self.key(key), seconds)

    def expireat(self, key: str, when: int) -> None:
        self.expire_ats += (self.key(key), when)

    def last_seen(self, topic: str, ms: int) -> None:
        self.seen += (ms, topic)

    def dead_letter(self, entry_id: str, fields: dict[str, Any], reason: str) -> None:
        """The entry's fields as they came (the first DEAD_LETTER_FIELDS), its id and why."""
        kept = {str(k): str(v) for k, v in itertools.islice(fields.items(), DEAD_LETTER_FIELDS)}
        if len(fields) > DEAD_LETTER_FIELDS:
            kept["dropped_fields"] = str(len(fields) - DEAD_LETTER_FIELDS)
        dead = {**kept, "id": entry_id, "reason": reason}
        self.dead += (len(dead), *(x for pair in dead.items() for x in pair))
        self.dead_count += 1

    def hmget(self, key: str, fields: list[str]) -> None:
        self.reads += (self.key(key), len(fields), *fields)
        self.read_count += 1

    def args(self, group: str) -> list[Any]:
        counts = (
            len(self.increments) // 3,
            len(self.expiries) // 2,
            len(self.expire_ats) // 2,
            len(self.seen) // 2,
            self.dead_count,
            self.read_count,
            len(self.acks),
        )
        return [
            group,
            DEAD_LETTER_MAXLEN,
            *counts,
            *self.increments,
            *self.expiries,
            *self.expire_ats,
            *self.seen,
            *self.dead,
            *self.reads,
            *self.acks,
        ]


class AggregatorMetrics(EventsMetrics):
    """What this process counted, exported on /metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped_batches = 0
        self.claimed = 0
        self.trimmed = 0


class StatsAggregator(EventsConsumer):
    """An `EventsConsumer` (a reader of its own per partition of `events`) applying batches,
    not one task per entry. Give it a `stats_client`."""

    metrics: AggregatorMetrics

    group = STATS_GROUP
    role = "stats"

    def __init__(self, client: Any, settings: Settings, *, consumer: str | None = None) -> None:
        super().__init__(client, settings, consumer=consumer)
        self._forget = register(self.client, "forget_topics")
        self._apply = register(self.client, "apply_counts")
        self.guard = ReputationGuard(settings, self.client, self.keys)
        self.batch_size = max(1, settings.stats_batch_size)
        self.flush_interval = max(0.01, settings.stats_flush_interval)
        self.claim_idle = max(settings.reclaim_idle, 3 * self.flush_interval)
        self.reclaim_idle_ms = int(self.claim_idle * 1000)
        self.reclaim_every = min(max(self.claim_idle / 2, 0.05), 30.0)
        self.trim_every = TRIM_INTERVAL_S
        self.metrics = AggregatorMetrics()

    def upkeep(self) -> list[Upkeep]:
        """Reclaim, trim and forget consumers; prune buckets and forget idle topics. The first
        rounds come soon after a start, so a process restarted often still prunes."""
        soon = self.reclaim_every
        return [
            self.per_stream("reclaim", self.reclaim_every, self.reclaim),
            self.per_stream("trim", self.trim_every, self.trim, first_after=soon),
            self.per_stream("consumers", FORGET_EVERY_S, self.forget_idle_consumers, soon),
            self.per_stream("prune", PRUNE_INTERVAL_S, self.prune_partition, first_after=soon),
        ]

    # --- consuming ----------------------------------------------------------------------------

    async def consume(self, stream: str) -> None:
        """Read and apply batches until stopped, then apply the batch in hand; any error drops
        the batch in hand (its entries stay pending)."""
        p = self.partitions[stream]
        batch = PartitionBatch()
        while True:
            if self.stop.is_set():
                await self.apply(p, batch)
                return
            if self._backlog[p.index]:
                # Our pending list holds the entries of the batch in hand too: apply it first,
                # then each read of the pending list is applied at once (so none is read twice).
                if not batch:
                    batch = await self.read_batch(p, "0", self.batch_size, None)
                    if not batch:
                        self._backlog[p.index] = False
                        continue
                await self.apply(p, batch)
                batch = PartitionBatch()
                continue
            wait_s = self.flush_interval
            if batch:
                wait_s = batch.first_read + self.flush_interval - time.monotonic()
            # Capped by `read` (a stop cuts it short; it stays under the socket timeout).
            block = max(1, int(wait_s * 1000))
            batch = await self.read_batch(p, ">", self.batch_size - len(batch), block, batch)
            full = len(batch) >= self.batch_size
            if full or (batch and time.monotonic() - batch.first_read >= self.flush_interval):
                await self.apply(p, batch)
                batch = PartitionBatch()

    async def read_batch(
        self,
        p: PartitionKeys,
        start: str,
        count: int,
        block: int | None,
        batch: PartitionBatch | None = None,
    ) -> PartitionBatch:
        batch = PartitionBatch() if batch is None else batch
        for entry_id, fields in await self.read(p.events, start, count, block):
            batch.add(entry_id, fields)
        return batch

    async def apply(self, p: PartitionKeys, batch: PartitionBatch) -> bool:
        """Counters + dead letters + XACK in one script call. False when the batch was dropped."""
        if not batch:
            return True
        if time.monotonic() - batch.first_read > self.claim_idle / 2:
            # Another consumer may have claimed these entries; read our pending list again.
            self.metrics.dropped_batches += 1
            self._backlog[p.index] = True
            log.warning("stale stats batch dropped", partition=p.index, entries=len(batch))
            return False
        try:
            call = self._counts_call(p, batch)
            guard_reads = self.guard.read_in(call, p, batch)
            replies = await self._apply(keys=call.keys, args=call.args(STATS_GROUP))
        except BaseException:
            self._backlog[p.index] = True
            raise
        self.metrics.batches += 1
        self.metrics.events.update(batch.events)
        self.metrics.dead_lettered += len(batch.dead)
        for entry_id, _, reason in batch.dead:
            log.warning("event dead-lettered", partition=p.index, id=entry_id, reason=reason)
        await self.guard.check(p, guard_reads, replies)
        return True

    @staticmethod
    def _counts_call(p: PartitionKeys, batch: PartitionBatch) -> CountsCall:
        call = CountsCall(p)
        for key, name, n in counter_increments(p, batch):
            call.hincrby(key, name, n)
        for topic in batch.series:
            call.expire(p.stats_series(topic), SERIES_TTL_S)
        for key, seconds, expire_at in batch.second_writes(p, time.time()):
            for second, n in seconds.items():
                call.hincrby(key, second, n)
            call.expireat(key, expire_at)
        for topic, ms in batch.last_seen.items():
            call.last_seen(topic, ms)
        for entry_id, fields, reason in batch.dead:
            call.dead_letter(entry_id, fields, reason)
        call.acks = batch.ids
        return call

    # --- upkeep -------------------------------------------------------------------------------

    async def reclaim(self, stream: str, *, min_idle_ms: int | None = None) -> int:
        claimed = await self.claim_pages(stream, self.batch_size, min_idle_ms)
        self.metrics.claimed += claimed
        return claimed

    async def trim(self, stream: str) -> int:
        """Remove entries every group has read and acknowledged (never a pending one)."""
        removed = await super().trim(stream)
        self.metrics.trimmed += removed
        return removed

    async def prune_partition(self, stream: str) -> None:
        p = self.partitions[stream]
        await self.prune(p)
        await self.forget_idle_topics(p)

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
