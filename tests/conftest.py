"""Shared fixtures. Tests talk to a real redis-server they start themselves on a free loopback
port (never 6379, never a server they did not start); fakeredis is for fast unit tests only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
import redis.asyncio as aioredis

from sesflow.cli.embedded import RedisProcess
from sesflow.common.settings import Settings, settings_from_mapping


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"), aof=False).start()
    assert server.port != 6379
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> str:
    """The session's redis-server, emptied for this test."""
    client = syncredis.Redis.from_url(redis_process.url)
    client.flushall()
    client.close()
    return redis_process.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: the test's Redis, a data folder of its own (the SQLite archive's
    home), plus overrides given as ENV_NAME=value strings."""

    def make(**env: Any) -> Settings:
        base = {
            "REDIS_URL": redis_url,
            "SESFLOW_DATA_DIR": str(tmp_path / "data"),
            "TRACKING_SECRET": "test-tracking-secret",
            "LOG_FORMAT": "json",
        }
        base.update({k: str(v) for k, v in env.items()})
        return settings_from_mapping(base)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("SESFLOW_TEST_ARTIFACTS", "tests/artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
