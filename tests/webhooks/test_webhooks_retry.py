"""Retries, backoff, dead letters, replay, disabling and leases, driven by a controllable clock:
the deliverer's rounds are run one at a time against a real Redis and a real receiver."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from sesflow.cli.dlq_entries import Replayer, dead_streams, newest
from sesflow.common.keys import Keys
from sesflow.common.schema import EventType, decode_event
from sesflow.common.settings import Settings
from sesflow.stats.aggregate import stats_client
from sesflow.stats.webhooks.backoff import MAX_DELAY_S, next_attempt_ms, retry_delay
from sesflow.stats.webhooks.deliver import Deliverer
from sesflow.stats.webhooks.endpoints import Endpoint, Registry
from sesflow.stats.webhooks.queue import Delivery, Queue, delivery_id, enqueue

from support.webhookkit import Receiver

KEYS = Keys()
P = KEYS.partition(0)
DAY = 24 * 3600


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rand = random.Random(7)
    for attempts in range(1, 8):
        ceiling = 2 ** (attempts - 1)
        delays = [retry_delay(attempts, rand) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter
    assert retry_delay(40, rand) <= MAX_DELAY_S
    assert next_attempt_ms(1, 0, 1000, 3600) is not None
    assert next_attempt_ms(3, 0, DAY * 1000, DAY) is None  # past the window: dead


def test_the_last_retry_comes_when_the_window_ends_not_before() -> None:
    """A retry an hour out with a minute of the window left is made as the window ends; one at
    the end of the window is the last."""
    rand = random.Random(3)
    minute_left = DAY * 1000 - 60_000
    assert next_attempt_ms(20, 0, minute_left, DAY, rand) == DAY * 1000
    assert next_attempt_ms(20, 0, DAY * 1000, DAY, rand) is None
    for now_ms in range(0, DAY * 1000, 997_000):
        due = next_attempt_ms(20, 0, now_ms, DAY, rand)
        assert due is not None and now_ms < due <= DAY * 1000


@pytest.fixture
async def rig(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> AsyncIterator[tuple[Deliverer, Clock, Endpoint, Any]]:
    settings = make_settings(
        WEBHOOK_ALLOW_PRIVATE="1", WEBHOOK_DISABLE_AFTER=str(5 * DAY), WEBHOOK_TIMEOUT="5"
    )
    client = stats_client(settings)
    clock = Clock()
    endpoint = await Registry(client, KEYS).create(
        receiver.url, ("*",), "", "", int(clock.now * 1000)
    )
    receiver.secrets.append(endpoint.secrets[0].value)
    deliverer = Deliverer(client, settings, clock=clock)
    deliverer.open()
    yield deliverer, clock, endpoint, client
    await deliverer.close()
    await client.aclose()


async def queue_one(client: Any, endpoint: Endpoint, now_ms: int, n: int = 0) -> str:
    entry = f"{now_ms}-{n}"
    d = Delivery(
        endpoint=endpoint.id,
        webhook_id=f"msg_0_{entry}",
        type="sent",
        body='{"type":"email.sent","timestamp":"2024-01-01T00:00:00.000Z","data":{}}',
        first_ms=now_ms,
    )
    tx = client.pipeline(transaction=True)
    enqueue(tx, P, [(delivery_id(entry, endpoint.id), d)], now_ms)
    await tx.execute()
    return d.webhook_id


async def step(deliverer: Deliverer) -> int:
    """One round, and every call it started ended and settled."""
    started = await deliverer.round()
    await asyncio.gather(*deliverer.inflight)
    await deliverer.flush()
    assert not deliverer.settling
    return started


async def test_retries_until_the_window_ends_then_dead_letter_and_replay(
    rig: tuple[Deliverer, Clock, Endpoint, Any], receiver: Receiver
) -> None:
    deliverer, clock, endpoint, client = rig
    receiver.down = True
    wid = await queue_one(client, endpoint, int(clock.now * 1000))
    assert await step(deliverer) == 1
    assert receiver.refused == 1
    (score,) = [s for _, s in await client.zrange(P.webhook_due, 0, -1, withscores=True)]
    assert clock.now * 1000 + 500 <= score <= clock.now * 1000 + 1000  # first retry within 1 s
    assert await step(deliverer) == 0  # not due yet
    clock.now += 1.0
    assert await step(deliverer) == 1
    assert receiver.refused == 2
    clock.now += DAY + 1  # past WEBHOOK_RETRY_FOR: the next failure is the last
    assert await step(deliverer) == 1
    assert await client.zcard(P.webhook_due) == 0
    assert await client.hlen(P.webhook_deliveries) == 0
    assert await client.hgetall(P.webhook_backlog) == {}
    (letter,) = await newest(client, dead_streams(KEYS, ["webhooks"]), 10)
    assert letter.fields["webhook_id"] == wid
    assert "HTTP 503" in letter.reason and letter.fields["attempts"] == "2"
    assert wid not in receiver.received
    # Replayed from the dead letters: due now, the same webhook-id, a new retry window.
    receiver.down = False
    settings = deliverer.settings
    outcome = await Replayer(client, settings, KEYS).replay(letter)
    assert outcome.replayed, outcome.detail
    assert await client.xlen(P.webhooks_dead) == 0
    again = await Replayer(client, settings, KEYS).replay(letter)
    assert not again.replayed  # never queued twice
    clock.now = time.time()
    assert await step(deliverer) == 1
    assert receiver.seen[wid] == 1
    assert await client.zcard(P.webhook_due) == 0


async def test_an_endpoint_failing_for_five_days_is_disabled(
    rig: tuple[Deliverer, Clock, Endpoint, Any], receiver: Receiver
) -> None:
    deliverer, clock, endpoint, client = rig
    # Retried for longer than the five days, so the endpoint is disabled before any dies.
    deliverer.settings = msgspec.structs.replace(deliverer.settings, webhook_retry_for=10 * DAY)
    receiver.down = True
    registry = Registry(client, KEYS)
    start = clock.now
    for n in range(3):
        await queue_one(client, endpoint, int(clock.now * 1000), n)
    assert await step(deliverer) == 3
    clock.now = start + 5 * DAY - 60  # still within the five days: retried
    assert await step(deliverer) == 3
    current = await registry.get(endpoint.id)
    assert current is not None and not current.disabled_ms
    clock.now = start + 5 * DAY + 1
    assert await step(deliverer) == 3
    current = await registry.get(endpoint.id)
    assert current is not None and current.disabled_ms
    assert "failing since" in current.disabled_reason
    assert await client.xlen(P.webhooks_dead) == 3  # replayable once enabled again
    events = [decode_event(f["e"]) for _, f in await client.xrange(P.events)]
    disabled = [e for e in events if e.type == EventType.WEBHOOK_DISABLED]
    assert len(disabled) == 1 and endpoint.id in disabled[0].detail
    # No new deliveries for a disabled endpoint: the fan-out skips it.
    assert not current.wants("sent", "")
    enabled = await registry.set_disabled(endpoint.id, int(clock.now * 1000), "")
    assert enabled is not None and not enabled.disabled_ms
    assert await client.hget(KEYS.webhook_failing, endpoint.id) is None


async def test_a_lease_that_ran_out_is_claimed_again_and_the_stale_one_cannot_settle(
    rig: tuple[Deliverer, Clock, Endpoint, Any], receiver: Receiver
) -> None:
    deliverer, clock, endpoint, client = rig
    now_ms = int(clock.now * 1000)
    wid = await queue_one(client, endpoint, now_ms)
    queue = Queue(client)
    (dead_claim,) = await queue.claim(P, now_ms, 15_000, 10, 4, {})  # then its owner died
    assert await queue.claim(P, now_ms + 14_000, 15_000, 10, 4, {}) == []
    clock.now += 15.0
    assert await step(deliverer) == 1
    assert receiver.seen[wid] == 1
    assert not await queue.done(dead_claim)  # settled already by the second claim


async def test_concurrency_per_endpoint_is_bounded(
    rig: tuple[Deliverer, Clock, Endpoint, Any],
) -> None:
    _, clock, endpoint, client = rig
    now_ms = int(clock.now * 1000)
    for n in range(10):
        await queue_one(client, endpoint, now_ms, n)
    queue = Queue(client)
    claimed = await queue.claim(P, now_ms, 15_000, 100, 4, {})
    assert len(claimed) == 4  # WEBHOOK_CONCURRENCY
    # In the order of their events.
    assert [c.id for c in claimed] == sorted(c.id for c in claimed)
    assert await queue.claim(P, now_ms, 15_000, 100, 4, {endpoint.id: 0}) == []
