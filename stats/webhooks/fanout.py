"""The webhook fan-out: group `webhooks` on every partition's `events`.

Exactly-once enqueueing, the way stats counts: a batch of entries is read, each event is mapped
to its public name (`vocabulary`) and matched against the endpoints (read once per batch, so a
new endpoint gets the next event), and the deliveries of the whole batch are added to the
partition's queue in the same MULTI/EXEC as the XACK of its entries (one hash tag, so it runs on
Redis Cluster). A crash before EXEC leaves the entries pending (read again); after any error
around EXEC the pending list is read again first: an entry EXEC acknowledged is no longer there,
so nothing is enqueued twice. With no endpoint, a batch is only acknowledged.

The deliverer (`deliver.Deliverer`) runs beside the readers as this consumer's background task,
and finishes its calls in hand within SHUTDOWN_GRACE at shutdown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sesflow.common.consumer import READ_BLOCK_MS, Entry, Upkeep
from sesflow.common.keys import WEBHOOKS_GROUP, PartitionKeys
from sesflow.common.settings import Settings
from sesflow.stats.counters import MalformedEvent, parse_entry
from sesflow.stats.events_consumer import EventsConsumer
from sesflow.stats.webhooks.deliver import Deliverer
from sesflow.stats.webhooks.endpoints import Endpoint, Registry
from sesflow.stats.webhooks.queue import Delivery, delivery_id, enqueue, webhook_id
from sesflow.stats.webhooks.vocabulary import payload, public_name

BATCH_SIZE = 500


def deliveries_for(
    p: PartitionKeys, entries: list[Entry], endpoints: list[Endpoint], now_ms: int
) -> list[tuple[str, Delivery]]:
    """The deliveries a batch of entries makes (malformed and internal events make none)."""
    items: list[tuple[str, Delivery]] = []
    if not endpoints:
        return items
    for entry_id, fields in entries:
        try:
            event = parse_entry(fields)
        except MalformedEvent:
            continue  # stats dead-letters it
        name = public_name(event)
        if name is None:
            continue
        targets = [ep for ep in endpoints if ep.wants(name, event.topic)]
        if not targets:
            continue
        body = payload(event, name, now_ms).decode()
        wid = webhook_id(p.index, entry_id)
        for ep in targets:
            delivery = Delivery(
                endpoint=ep.id, webhook_id=wid, type=name, body=body, first_ms=now_ms
            )
            items.append((delivery_id(entry_id, ep.id), delivery))
    return items


class WebhookFanout(EventsConsumer):
    """Give it a client without automatic retries (`stats.aggregate.stats_client`)."""

    group = WEBHOOKS_GROUP
    role = "webhooks"

    def __init__(
        self,
        client: Any,
        settings: Settings,
        *,
        consumer: str | None = None,
        deliverer: Deliverer | None = None,
    ) -> None:
        super().__init__(client, settings, consumer=consumer)
        self.registry = Registry(client, self.keys)
        self.deliverer = deliverer or Deliverer(client, settings)
        self.enqueued = 0
        self._delivering: asyncio.Task[None] | None = None

    def upkeep(self) -> list[Upkeep]:
        return [
            self.per_stream("reclaim", self.reclaim_every, self.reclaim),
            self.per_stream("trim", self.trim_every, self.trim),
        ]

    def background(self, stop: asyncio.Event) -> list[Any]:
        return [self._deliver(stop)]

    async def _deliver(self, stop: asyncio.Event) -> None:
        self._delivering = asyncio.current_task()
        await self.deliverer.run(stop)

    async def after_drain(self) -> None:
        """Let the deliverer finish its calls in hand (it watches `stop` and has its grace)."""
        task = self._delivering
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.settings.shutdown_grace + 1)

    async def consume(self, stream: str) -> None:
        p = self.partitions[stream]
        while not self.stop.is_set():
            if self._backlog[p.index]:
                entries = await self.read(stream, "0", BATCH_SIZE, None)
                if not entries:
                    self._backlog[p.index] = False
                    continue
            else:
                entries = await self.read(stream, ">", BATCH_SIZE, READ_BLOCK_MS)
            if entries:
                await self.apply(p, entries)

    async def apply(self, p: PartitionKeys, entries: list[Entry]) -> None:
        """Enqueue the batch's deliveries and XACK its entries, in one MULTI/EXEC."""
        now_ms = int(time.time() * 1000)
        try:
            endpoints = list((await self.registry.all()).values())
            items = deliveries_for(p, entries, endpoints, now_ms)
            tx = self.client.pipeline(transaction=True)
            enqueue(tx, p, items, now_ms)
            tx.xack(p.events, self.group, *[entry_id for entry_id, _ in entries])
            await tx.execute()
        except BaseException:
            self._backlog[p.index] = True
            raise
        self.enqueued += len(items)
        if items:
            self.deliverer.wake()

    async def reclaim(self, stream: str, *, min_idle_ms: int | None = None) -> int:
        return await self.claim_pages(stream, BATCH_SIZE, min_idle_ms)
