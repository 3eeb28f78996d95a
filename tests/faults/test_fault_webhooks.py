"""Fault: the stats process (fan-out and deliverer) is SIGKILLed, or Redis restarts, while
webhooks are being delivered to a real receiver: every event still arrives, verified."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from sesflow.cli.embedded import RedisProcess
from sesflow.common.connection import as_fields
from sesflow.common.keys import Keys
from sesflow.common.schema import Event, EventType, event_fields

from support.faultkit import UNREACHABLE
from support.procs import Cluster
from support.stubprocess import StubProcess
from support.until import until
from support.webhookkit import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

P = Keys("sesflow").partition(0)
ENV = {"WEBHOOK_ALLOW_PRIVATE": "1", "RECLAIM_IDLE": "2", "WEBHOOK_TIMEOUT": "2"}


async def setup(cluster: Cluster, receiver: Receiver) -> None:
    cluster.start("stats")
    cluster.wait_listening(["stats"])
    body = {"url": receiver.url, "events": ["*"]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{cluster.url('stats')}/v1/webhooks", json=body) as res,
    ):
        assert res.status == 201, await res.text()
        receiver.secrets.append((await res.json())["secret"])


async def publish(client: aioredis.Redis, count: int, start: int = 0) -> set[str]:
    ids = set()
    now = int(time.time() * 1000)
    for n in range(start, start + count):
        e = Event(type=EventType.DELIVERED, ts=now, topic="f", msg_id=f"{now}-0", index=n)
        entry = await client.xadd(P.events, as_fields(event_fields(e)))
        ids.add(f"msg_0_{entry!s}")
    return ids


async def all_arrive(receiver: Receiver, expected: set[str], cluster: Cluster) -> None:
    async def got() -> set[str]:
        return set(receiver.received)

    await until(
        got, lambda g: g >= expected, what="every webhook", within=60, context=cluster.all_logs
    )
    assert set(receiver.received) == expected
    assert receiver.forged == 0


async def test_sigkill_of_stats_mid_delivery_loses_nothing(
    redis_url: str, make_stub: Callable[..., StubProcess], make_cluster: Callable[..., Cluster]
) -> None:
    receiver = await Receiver().start()
    cluster = make_cluster(redis_url, make_stub(), **ENV)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await setup(cluster, receiver)
        receiver.down = True  # deliveries pile up, leased and retried
        expected = await publish(client, 200)
        await until(lambda: _refused(receiver), lambda n: n >= 5, what="calls while down")
        (stats,) = cluster.procs
        stats.signal(signal.SIGKILL)
        assert stats.wait(10) is not None
        expected |= await publish(client, 100, 200)  # read by no one until the restart
        receiver.down = False
        cluster.procs.clear()
        cluster.start("stats")
        await all_arrive(receiver, expected, cluster)
    finally:
        await client.aclose()
        await receiver.stop()


async def _refused(receiver: Receiver) -> int:
    return receiver.refused


async def test_redis_restart_mid_delivery_loses_nothing(
    aof_redis: RedisProcess,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
) -> None:
    receiver = await Receiver().start()
    cluster = make_cluster(aof_redis.url, make_stub(), **ENV)
    client = aioredis.Redis.from_url(aof_redis.url, decode_responses=True)
    try:
        await setup(cluster, receiver)
        expected = await publish(client, 300)
        await until(lambda: _count(receiver), lambda n: n >= 20, what="some webhooks")
        await asyncio.to_thread(aof_redis.stop)
        await asyncio.sleep(3)
        assert all(p.running for p in cluster.procs), cluster.all_logs()
        await asyncio.to_thread(aof_redis.start)
        expected |= await until(
            lambda: publish(client, 50, 300), what="Redis back", ignore=UNREACHABLE
        )
        await all_arrive(receiver, expected, cluster)
    finally:
        await client.aclose()
        await receiver.stop()


async def _count(receiver: Receiver) -> int:
    return len(receiver.received)
