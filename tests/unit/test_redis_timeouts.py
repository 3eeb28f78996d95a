"""Redis clients give up on a stuck server (socket and connect timeouts) instead of hanging,
and no blocking read outlasts the socket timeout."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from sesflow.common.connection import BLOCK_MARGIN_S, LONGEST_BLOCK_MS, connect
from sesflow.common.errors import ConfigError
from sesflow.common.settings import Settings


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a stuck Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def test_a_stuck_redis_is_an_error_within_the_socket_timeout(
    make_settings: Any, silent_server: int
) -> None:
    settings: Settings = make_settings(
        REDIS_URL=f"redis://127.0.0.1:{silent_server}/0", REDIS_SOCKET_TIMEOUT="2"
    )
    # No command retries (as ingest and stats use it): one timeout is the whole wait.
    client = connect(settings, retry=Retry(NoBackoff(), 0))
    started = time.monotonic()
    try:
        with pytest.raises(RedisTimeoutError):
            # The guard only keeps a regression from hanging the suite; it must not fire.
            await asyncio.wait_for(client.ping(), timeout=20)
    finally:
        await client.aclose()
    assert time.monotonic() - started < 10


async def test_the_timeouts_are_the_settings(make_settings: Any) -> None:
    client = connect(make_settings(REDIS_SOCKET_TIMEOUT="7.5", REDIS_CONNECT_TIMEOUT="1.5"))
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.5, 1.5)
    finally:
        await client.aclose()


async def test_a_blocking_read_is_not_cut_by_the_smallest_socket_timeout(
    make_settings: Any, redis: Any
) -> None:
    smallest = LONGEST_BLOCK_MS / 1000 + BLOCK_MARGIN_S
    client = connect(make_settings(REDIS_SOCKET_TIMEOUT=str(smallest)))
    try:
        await redis.xgroup_create("blocked", "g", id="0", mkstream=True)
        reply = await client.xreadgroup("g", "c", {"blocked": ">"}, block=LONGEST_BLOCK_MS)
        assert not reply
    except RedisTimeoutError:
        pytest.fail("the socket timeout cut a blocking read")
    finally:
        await client.aclose()


def test_a_socket_timeout_below_the_longest_block_is_refused(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="REDIS_SOCKET_TIMEOUT"):
        connect(make_settings(REDIS_SOCKET_TIMEOUT="1"))


def test_every_blocking_read_stays_within_the_longest_block() -> None:
    """The shared consumer caps every read (dispatcher, sender, stats) at READ_BLOCK_MS."""
    from sesflow.common.consumer import READ_BLOCK_MS

    assert READ_BLOCK_MS <= LONGEST_BLOCK_MS


async def test_a_client_opens_at_most_redis_max_connections(
    make_settings: Any, redis: Any, redis_url: str
) -> None:
    """A burst of concurrent commands waits for a free connection instead of opening one each
    (thousands of them would exhaust Redis's maxclients for every role)."""
    url = f"{redis_url}?client_name=capped-pool"
    client = connect(make_settings(REDIS_URL=url, REDIS_MAX_CONNECTIONS="9"))
    try:
        burst = asyncio.gather(*(client.blpop([f"nothing:{n}"], timeout=0.2) for n in range(40)))
        await asyncio.sleep(0.1)  # the burst is under way: as many connections as it may get
        opened = [c for c in await redis.client_list() if c.get("name") == "capped-pool"]
        assert 1 <= len(opened) <= 9
        assert await burst == [None] * 40
    finally:
        await client.aclose()


def test_the_pool_leaves_room_beside_one_blocking_read_per_partition() -> None:
    from sesflow.common.settings import settings_from_mapping

    with pytest.raises(ConfigError, match="REDIS_MAX_CONNECTIONS"):
        settings_from_mapping({"SEND_PARTITIONS": "100", "REDIS_MAX_CONNECTIONS": "100"})
    assert settings_from_mapping({"SEND_PARTITIONS": "100"}).redis_max_connections == 256
