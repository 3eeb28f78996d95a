"""The webhook deliverer: claims due deliveries of every partition and POSTs them.

- Each call is signed per Standard Webhooks (`signing`) with every current secret of the
  endpoint, carries the delivery's stable `webhook-id`, and is bounded by WEBHOOK_TIMEOUT; a 2xx
  answer is a success, anything else (redirects are not followed) a failure.
- At most WEBHOOK_CONCURRENCY calls per endpoint are in flight in this process (the claim skips
  deliveries of a busy endpoint, so they start in the order of their events), MAX_INFLIGHT in all.
- A claim is a lease (`queue`): a deliverer that dies (SIGKILL) or loses Redis leaves its
  deliveries to come due again when the lease ends, so several stats replicas share the queue
  and none is lost (at-least-once; `webhook-id` lets receivers dedupe).
- A call's slot is free once its answer is in; how it ended (delivered, retry, dead) waits in
  `settling` and the loop settles everything waiting in one script call per partition before
  it claims again (a settlement whose lease ran out meanwhile changes nothing: the delivery is
  another deliverer's, or due again). Settlements a Redis failure left are sent again.
- Endpoints come from an `EndpointCache` (read again within a second of a change); a delivery
  is dropped (endpoint deleted) or dead-lettered (endpoint disabled) only after reading its
  endpoint again from Redis.
- A failure is retried with `backoff` until WEBHOOK_RETRY_FOR after the delivery was enqueued,
  then dead-lettered (`sesflow dlq`). An endpoint failing with no success for
  WEBHOOK_DISABLE_AFTER is disabled, with a `webhook_disabled` event and a warning.
- Calls go through one keep-alive pool per endpoint (`pools`), whose every new connection
  passes the SSRF guard (`ssrf`).

`clock` (epoch seconds) is injectable, so tests drive retries, dead letters and disabling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from sesflow.common.connection import as_fields
from sesflow.common.consumer import log_failure, sleep_or_stop
from sesflow.common.keys import Keys
from sesflow.common.logs import get_logger
from sesflow.common.schema import Event, EventType, event_fields
from sesflow.common.settings import Settings
from sesflow.stats.webhooks import metrics
from sesflow.stats.webhooks.backoff import next_attempt_ms
from sesflow.stats.webhooks.endpoints import Endpoint, EndpointCache, Registry
from sesflow.stats.webhooks.pools import CallFailed, EndpointPools
from sesflow.stats.webhooks.queue import Claimed, Queue, Settlement
from sesflow.stats.webhooks.signing import headers

log = get_logger(__name__)

MAX_INFLIGHT = 256
IDLE_POLL_S = 0.25  # how often an idle deliverer looks for deliveries that came due
LEASE_MARGIN_S = 10.0  # a lease outlives the call's timeout by this much
ERROR_PAUSE_S = 1.0
CLEAR_FAILING_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Ending:
    """A settlement waiting to be sent, with what to count (and log) once it is settled."""

    settlement: Settlement
    counted: str  # the `sesflow_webhook_deliveries_total` outcome
    reason: str = ""  # a dead letter's, logged


class Deliverer:
    def __init__(
        self, client: Any, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self.keys = Keys(settings.redis_prefix, settings.send_partitions)
        self.registry = Registry(client, self.keys)
        self.queue = Queue(client)
        self.per_endpoint = max(1, settings.webhook_concurrency)
        self.lease_ms = int((settings.webhook_timeout + LEASE_MARGIN_S) * 1000)
        self.busy: dict[str, int] = {}  # endpoint -> calls in flight here
        self.inflight: set[asyncio.Task[None]] = set()
        self.cache = EndpointCache(self.registry)
        self.endpoints: dict[str, Endpoint] = {}
        self.settling: dict[int, list[Ending]] = {}  # partition -> calls ended, not settled
        self.pools: EndpointPools | None = None
        self._wake = asyncio.Event()
        self._cleared: dict[str, float] = {}

    def wake(self) -> None:
        self._wake.set()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def open(self) -> None:
        """The endpoints' connection pools (every connection through the SSRF guard)."""
        self.pools = EndpointPools(
            allow_private=self.settings.webhook_allow_private,
            timeout=self.settings.webhook_timeout,
            per_endpoint=self.per_endpoint,
        )

    async def close(self) -> None:
        if self.pools is not None:
            await self.pools.close()

    async def run(self, stop: asyncio.Event) -> None:
        self.open()
        try:
            while not stop.is_set():
                self._wake.clear()  # a call ending from here on wakes the idle wait below
                try:
                    await self.flush()
                    started = await self.round()
                except Exception as exc:
                    log_failure("webhooks: claiming deliveries", exc)
                    await sleep_or_stop(stop, ERROR_PAUSE_S)
                    continue
                if not started:
                    await self._idle(stop)
                elif len(self.inflight) >= MAX_INFLIGHT:
                    await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self._finish()

    async def _idle(self, stop: asyncio.Event) -> None:
        """Until woken (new deliveries, a call ended), or IDLE_POLL_S for retries due."""
        if self._wake.is_set():
            return
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=IDLE_POLL_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _finish(self) -> None:
        """The calls in hand get SHUTDOWN_GRACE; cancelled ones come due when their lease ends."""
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=self.settings.shutdown_grace)
        for task in self.inflight:
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        try:
            await self.flush()
        except Exception as exc:  # left leased: due again when the lease ends
            log_failure("webhooks: settling at shutdown", exc)
        await self.close()

    async def round(self) -> int:
        """Claim what is due (within the free slots) on every partition; how many started."""
        free = MAX_INFLIGHT - len(self.inflight)
        if free <= 0:
            return 0
        endpoints = await self.cache.all()
        if endpoints is not self.endpoints and self.pools is not None:
            await self.pools.keep_only(set(endpoints))
        self.endpoints = endpoints
        budgets = {ep: self.per_endpoint - n for ep, n in self.busy.items()}
        started = 0
        for p in self.keys.partitions:
            claimed = await self.queue.claim(
                p, self.now_ms(), self.lease_ms, free - started, self.per_endpoint, budgets
            )
            for c in claimed:
                budgets[c.delivery.endpoint] = (
                    budgets.get(c.delivery.endpoint, self.per_endpoint) - 1
                )
                self._spawn(c)
            started += len(claimed)
            if started >= free:
                break
        return started

    def _spawn(self, c: Claimed) -> None:
        endpoint = c.delivery.endpoint
        self.busy[endpoint] = self.busy.get(endpoint, 0) + 1
        task = asyncio.create_task(self.handle(c))
        self.inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.inflight.discard(t)
            self.busy[endpoint] -= 1
            if not self.busy[endpoint]:
                del self.busy[endpoint]
            self._wake.set()  # a slot of this endpoint is free

        task.add_done_callback(done)

    async def handle(self, c: Claimed) -> None:
        """One delivery, left to settle; a Redis failure leaves it leased (due again)."""
        try:
            endpoint = self.endpoints.get(c.delivery.endpoint)
            if endpoint is None or endpoint.disabled_ms:  # never drop or bury on the cache alone
                endpoint = await self.registry.get(c.delivery.endpoint)
                self.cache.forget()
            if endpoint is None:  # deleted since: nobody to deliver to
                self.settle(Ending(Settlement.done(c), "dropped"))
                return
            if endpoint.disabled_ms:
                self.bury(c, "endpoint disabled")
                return
            error = await self.call(endpoint, c)
            if error is None:
                await self.succeeded(c)
            else:
                await self.failed(endpoint, c, error)
        except Exception as exc:
            log_failure("webhooks: settling a delivery", exc, delivery=c.id)

    def settle(self, ending: Ending) -> None:
        """Leave it for the loop's next `flush`."""
        self.settling.setdefault(ending.settlement.claimed.partition.index, []).append(ending)
        self._wake.set()

    async def flush(self) -> None:
        """Settle every ended call, one script call per partition; on a failure what is left
        waits for the next flush (sending a settlement twice is harmless)."""
        for index in list(self.settling):
            endings = self.settling.pop(index)
            p = endings[0].settlement.claimed.partition
            try:
                settled = await self.queue.settle(p, [e.settlement for e in endings])
            except BaseException:
                self.settling[index] = endings + self.settling.get(index, [])
                raise
            for ending, ours in zip(endings, settled, strict=True):
                if ours:
                    self.count(ending)

    def count(self, ending: Ending) -> None:
        metrics.DELIVERIES.labels(ending.counted).inc()
        if ending.counted == "dead":
            d = ending.settlement.claimed.delivery
            log.warning(
                "webhook delivery dead-lettered",
                endpoint=d.endpoint,
                webhook_id=d.webhook_id,
                reason=ending.reason,
            )

    async def call(self, endpoint: Endpoint, c: Claimed) -> str | None:
        """POST the delivery; None on a 2xx answer, else what went wrong."""
        assert self.pools is not None
        now_ms = self.now_ms()
        body = c.delivery.body.encode()
        sent = headers(
            endpoint.signing_secrets(now_ms), c.delivery.webhook_id, now_ms // 1000, body
        )
        started = time.monotonic()
        try:
            status = await self.pools.post(endpoint.id, endpoint.url, sent, body)
        except CallFailed as exc:
            return str(exc)
        finally:
            metrics.LATENCY.observe(time.monotonic() - started)
        return None if 200 <= status < 300 else f"HTTP {status}"

    async def succeeded(self, c: Claimed) -> None:
        self.settle(Ending(Settlement.done(c), "delivered"))
        endpoint = c.delivery.endpoint
        now = time.monotonic()
        if now - self._cleared.get(endpoint, 0.0) >= CLEAR_FAILING_EVERY_S:
            self._cleared[endpoint] = now
            await self.registry.succeeded(endpoint)

    async def failed(self, endpoint: Endpoint, c: Claimed, error: str) -> None:
        now_ms = self.now_ms()
        self._cleared.pop(endpoint.id, None)
        since = await self.registry.failed(endpoint.id, now_ms)
        if now_ms - since >= self.settings.webhook_disable_after * 1000:
            await self.disable(endpoint, since, error)
            self.bury(c, f"endpoint disabled; last error: {error}")
            return
        d = c.delivery
        attempts = d.attempts + 1
        due = next_attempt_ms(attempts, d.first_ms, now_ms, self.settings.webhook_retry_for)
        if due is None:
            self.bury(c, f"failed for WEBHOOK_RETRY_FOR after {attempts} attempts: {error}")
            return
        changed = msgspec.structs.replace(d, attempts=attempts, last_error=error)
        self.settle(Ending(Settlement.retry(c, due, changed), "retried"))

    def bury(self, c: Claimed, reason: str) -> None:
        dead = Settlement.dead(c, c.delivery, reason, self.now_ms())
        self.settle(Ending(dead, "dead", reason))

    async def disable(self, endpoint: Endpoint, since_ms: int, error: str) -> None:
        now_ms = self.now_ms()
        reason = f"failing since {since_ms} with no success; last error: {error}"[:500]
        if not await self.registry.disable(endpoint.id, now_ms, reason):
            return  # gone, or disabled already (by a concurrent failure)
        event = Event(
            type=EventType.WEBHOOK_DISABLED,
            ts=now_ms,
            topic=endpoint.topic,
            detail=f"{endpoint.id} {endpoint.url}: {reason}"[:1000],
        )
        await self.client.xadd(self.keys.partition(0).events, as_fields(event_fields(event)))
        log.warning(
            "webhook endpoint disabled", endpoint=endpoint.id, url=endpoint.url, reason=reason
        )
