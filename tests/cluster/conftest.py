"""Fixtures of the Redis Cluster tests: one real 3-master cluster per session, emptied per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from support.redis_cluster import RedisClusterProcess


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess]:
    cluster = RedisClusterProcess(tmp_path_factory.mktemp("redis-cluster"), masters=3).start()
    assert 6379 not in cluster.ports
    yield cluster
    cluster.stop()


@pytest.fixture
async def cluster_client(redis_cluster: RedisClusterProcess) -> AsyncIterator[RedisCluster]:
    """An async RedisCluster client on the emptied cluster."""
    redis_cluster.flushall()
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    yield client
    await client.aclose()
