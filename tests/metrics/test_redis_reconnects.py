"""`sesflow_redis_reconnects_total{role}` counts connections that Redis dropped and the client
re-established, not the connections a pool opens as it grows."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster

from sesflow.common.connection import connect
from sesflow.common.metrics import RECONNECTS, ReconnectCounter
from sesflow.common.settings import Settings
from sesflow.ingest.api import create_app


async def reconnects_served(client: TestClient[Any, Any], role: str) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sesflow_redis_reconnects_total":
                assert sample.labels == {"role": role}
                return sample.value
    raise AssertionError("sesflow_redis_reconnects_total is not served")


async def test_a_growing_pool_is_not_a_reconnect(settings: Settings, redis: Any) -> None:
    client = connect(settings)
    try:
        before = RECONNECTS.count
        # Concurrent commands open several connections of the pool at once.
        await asyncio.gather(*(client.blpop(["nothing"], timeout=0.05) for _ in range(4)))
        assert len(await redis.client_list()) >= 1 + 4  # this test's own client, plus the pool
        assert RECONNECTS.count == before
    finally:
        await client.aclose()


async def test_dropped_connections_count_once_each_when_re_established(
    settings: Settings, redis: Any
) -> None:
    client = connect(settings)
    try:
        await client.ping()
        before = RECONNECTS.count
        assert await redis.client_kill_filter(_type="normal", skipme=True) >= 1
        assert await client.ping()  # redis-py reconnects (its Retry) and the ping succeeds
        assert RECONNECTS.count == before + 1
        assert await client.ping()  # still connected: nothing more to count
        assert RECONNECTS.count == before + 1
    finally:
        await client.aclose()


async def test_a_role_serves_its_reconnects(settings: Settings, redis: Any) -> None:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        assert (await client.get("/v1/suppressions")).status == 200
        before = await reconnects_served(client, "ingest")
        await redis.client_kill_filter(_type="normal", skipme=True)
        # The API does not retry (a lost MULTI reply must not enqueue twice): the first request
        # may answer 503; the next one reconnects.
        statuses = [(await client.get("/v1/suppressions")).status for _ in range(2)]
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}
        assert await reconnects_served(client, "ingest") == before + 1
    finally:
        await client.close()


async def test_cluster_clients_are_hooked_on_every_node() -> None:
    cluster = RedisCluster(host="127.0.0.1", port=1)  # nothing is sent before first use
    try:
        inner = cluster.nodes_manager.connection_kwargs.get("redis_connect_func")
        ReconnectCounter().watch(cluster)
        nodes: list[Any] = [cluster.nodes_manager, *cluster.nodes_manager.startup_nodes.values()]
        for node in nodes:
            hook = node.connection_kwargs["redis_connect_func"]
            assert hook is not inner and hook.__qualname__.startswith("ReconnectCounter.hook")
    finally:
        await cluster.aclose()
