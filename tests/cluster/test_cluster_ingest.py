"""ingest on a cluster: the cancel's stop time comes from the clock of the node holding
`requests` (the clock that stamps message ids), not from whichever node TIME would go to."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis_cluster import RedisClusterProcess

from common.keys import Keys
from ingest.api import requests_clock_ms

KEYS = Keys("sesflow", 3)


async def test_the_stop_time_is_read_on_the_requests_node(
    cluster_client: RedisCluster, redis_cluster: RedisClusterProcess
) -> None:
    asked: list[Any] = []
    real_time = cluster_client.time

    async def spy(**kwargs: Any) -> Any:
        asked.append(kwargs.get("target_nodes"))
        return await real_time(**kwargs)

    cluster_client.time = spy  # type: ignore[method-assign]
    before = int(time.time() * 1000)
    stop_ms = await requests_clock_ms(cluster_client, KEYS)
    assert before - 1000 <= stop_ms <= int(time.time() * 1000) + 1000
    [node] = asked
    assert node.port == redis_cluster.port_of_slot(key_slot(KEYS.requests.encode()))
    # and it is not simply the node TIME goes to by default
    assert cluster_client.get_default_node().port != node.port or len(redis_cluster.ports) == 1
