"""Redis connections: one client per process, built from settings, with reconnect and backoff.

Callers get `redis.asyncio.Redis` (or `RedisCluster` when REDIS_CLUSTER=1) with
`decode_responses=True`; `Redis` names either. Connection errors surface as `RedisUnavailable`
through `redis_errors()`.

redis-py's annotations cannot follow `decode_responses`: they type a reply `bytes | str`. Code
that reads a reply of such a client says what it is with `typing.cast` (`cast(str, ...)`,
`cast(dict[str, str], ...)`, `cast(Entries, ...)`); `as_fields` hands XADD a field mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, TypeAlias, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from sesflow.common.errors import ConfigError, RedisUnavailable
from sesflow.common.metrics import watch_reconnects
from sesflow.common.settings import Settings

Redis: TypeAlias = aioredis.Redis | RedisCluster
Fields: TypeAlias = dict[FieldT, EncodableT]
Entries: TypeAlias = list[tuple[str, dict[str, str]]]  # XRANGE / XREVRANGE, decoded


def as_fields(fields: Mapping[str, str] | Mapping[str, bytes]) -> Fields:
    """`fields` as XADD is annotated to take them (the same object: dict is invariant)."""
    return cast(Fields, fields)


UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError, OSError)

# The longest XREADGROUP BLOCK any loop uses. The socket timeout must exceed it, or every idle
# blocking read would end in a timeout error instead of an empty reply.
LONGEST_BLOCK_MS = 1000
BLOCK_MARGIN_S = 1.0

# Error replies that say "not now" rather than "never": a retry later can succeed.
TRANSIENT_REPLIES = ("OOM", "READONLY", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def transient_reply(exc: BaseException) -> bool:
    """A Redis error reply (out of memory, a replica, a busy script...) worth retrying."""
    return isinstance(exc, ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)


def connect(settings: Settings, **overrides: Any) -> Any:
    """A client for REDIS_URL; nothing is sent until first use."""
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is not set (`sesflow up` starts an embedded Redis)")
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    options.update(overrides)
    if options["socket_timeout"] < LONGEST_BLOCK_MS / 1000 + BLOCK_MARGIN_S:
        raise ConfigError(
            f"REDIS_SOCKET_TIMEOUT must be at least {LONGEST_BLOCK_MS / 1000 + BLOCK_MARGIN_S:g}"
            f" seconds (reads block up to {LONGEST_BLOCK_MS / 1000:g} s)"
        )
    if settings.redis_cluster:
        options.pop("health_check_interval")
        # Per node; past it a command fails at once (MaxConnectionsError, a ConnectionError).
        options.setdefault("max_connections", settings.redis_max_connections)
        return watch_reconnects(RedisCluster.from_url(settings.redis_url, **options))
    # A bounded pool where a command waits for a free connection, at most as long as for a
    # reply, then fails as unavailable.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=options.pop("max_connections", settings.redis_max_connections),
        timeout=options["socket_timeout"],
        **options,
    )
    # Every client counts its reconnects for `sesflow_redis_reconnects_total`.
    return watch_reconnects(aioredis.Redis.from_pool(pool))


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Translate "Redis is not there" into RedisUnavailable at the boundary."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise RedisUnavailable(str(exc) or type(exc).__name__) from exc


async def wait_for_redis(client: Redis, stop: asyncio.Event | None = None, log: Any = None) -> bool:
    """Block until Redis answers PING (True) or `stop` is set (False)."""
    delay = 0.1
    warned = False
    while stop is None or not stop.is_set():
        try:
            await client.ping()
            return True
        except UNAVAILABLE as exc:
            if log is not None and not warned:
                log.warning("redis unavailable, waiting", error=str(exc))
                warned = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    return False


async def ensure_group(client: Redis, stream: str, group: str) -> None:
    """Create a consumer group (and its stream) reading from the start; idempotent."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@contextlib.asynccontextmanager
async def redis_client(settings: Settings) -> AsyncIterator[Redis]:
    client = connect(settings)
    try:
        yield client
    finally:
        await client.aclose()
