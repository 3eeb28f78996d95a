"""Prometheus metrics: the one way every role defines and serves them.

A role's own metrics are module-level objects in `<role>/metrics.py`, created with
`registry=None` (one role per process, so they count for the process), and that module's
`role_metrics()` returns a `RoleMetrics`: a registry that serves them beside what every role
serves (HTTP requests, Redis reconnects, the process and GC collectors), an HTTP middleware that
counts requests, and the `/metrics` handler. Each app builds its own `RoleMetrics`, so the HTTP
requests are counted per app (tests build several apps in one process). Metrics read from Redis
on each scrape come from a collector registered with an async `refresh`, awaited before rendering.

Reconnects are counted per process: `common.connection.connect` hooks every client it builds, so
each role counts all of its clients without knowing about it.

A reconnect is a connection object of redis-py's pool (or of a cluster node) that connects again
after having been connected once: redis-py reuses the object after a dropped connection, while a
pool that merely grows under load creates new objects, which are not reconnects.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio.cluster import RedisCluster

if TYPE_CHECKING:  # connection.py imports this module
    from sesflow.common.connection import Redis

R = TypeVar("R", bound="Redis")

ConnectFunc = Callable[[Any], Any]


class ReconnectCounter:
    """Counts connections that connect again; `count` is read on every scrape."""

    def __init__(self) -> None:
        self.count = 0
        self._connected_once: weakref.WeakSet[Any] = weakref.WeakSet()

    def hook(self, inner: ConnectFunc | None) -> Callable[[Any], Awaitable[None]]:
        """A `redis_connect_func` that runs `inner` (or the connection's own handshake), then
        counts. It runs only once the socket is open and the handshake succeeded."""

        async def on_connect(connection: Any) -> None:
            if inner is None:
                await connection.on_connect()
            else:
                result = inner(connection)
                if isinstance(result, Awaitable):
                    await result
            if connection in self._connected_once:
                self.count += 1
            else:
                self._connected_once.add(connection)

        return on_connect

    def watch(self, client: R) -> R:
        """Hook `client` (Redis or RedisCluster) before its first command; returns it."""
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            kwargs = pool.connection_kwargs
            kwargs["redis_connect_func"] = self.hook(kwargs.get("redis_connect_func"))
            return client
        assert isinstance(client, RedisCluster)
        nodes = client.nodes_manager
        # Nodes found later are built from the manager's kwargs; the startup nodes were built
        # already, each with a copy of them. Each dict is hooked once (no double counting).
        all_kwargs = {
            id(kwargs): kwargs
            for kwargs in (
                nodes.connection_kwargs,
                *(node.connection_kwargs for node in nodes.startup_nodes.values()),
                *(node.connection_kwargs for node in nodes.nodes_cache.values()),
            )
        }
        for kwargs in all_kwargs.values():
            kwargs["redis_connect_func"] = self.hook(kwargs.get("redis_connect_func"))
        return client


RECONNECTS = ReconnectCounter()


def watch_reconnects(client: R) -> R:
    return RECONNECTS.watch(client)


class RedisReconnects(Collector):
    """`sesflow_redis_reconnects_total{role}` from this process's counter."""

    def __init__(self, role: str, counter: ReconnectCounter = RECONNECTS) -> None:
        self.role = role
        self.counter = counter

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "sesflow_redis_reconnects",
            "Redis connections re-established by this process",
            labels=["role"],
        )
        family.add_metric([self.role], self.counter.count)
        yield family


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Refresh = Callable[[], Awaitable[None]]

# What prometheus-client's default registry serves: process_*, python_gc_*, python_info.
RUNTIME_COLLECTORS: tuple[Collector, ...] = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)


class RoleMetrics:
    """A role's registry with the shared metrics, an HTTP middleware and a `/metrics` handler."""

    def __init__(self, role: str, collectors: Iterable[Collector] = ()) -> None:
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        self._refreshes: list[Refresh] = []
        for collector in (*RUNTIME_COLLECTORS, RedisReconnects(role), *collectors):
            self.registry.register(collector)
        self.http_requests = Counter(
            "sesflow_http_requests",
            "HTTP requests answered, by route template and status",
            ["role", "route", "status"],
            registry=self.registry,
        )

    @property
    def middleware(self) -> Any:
        """Outermost middleware: it sees the status the client gets, errors included."""

        @web.middleware
        async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._count(request, exc.status)
                raise
            except Exception:
                self._count(request, 500)
                raise
            self._count(request, response.status)
            return response

        return count_requests

    def _count(self, request: web.Request, status: int) -> None:
        # The route's template ("/v1/topics/{topic_id}"), never the path: bounded cardinality.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.http_requests.labels(self.role, route, str(status)).inc()

    def register(self, collector: Collector, refresh: Refresh | None = None) -> None:
        """Serve `collector` too; `refresh`, if given, is awaited before each scrape."""
        self.registry.register(collector)
        if refresh is not None:
            self._refreshes.append(refresh)

    async def render(self) -> bytes:
        for refresh in self._refreshes:
            await refresh()
        return generate_latest(self.registry)

    async def handler(self, _: web.Request) -> web.Response:
        return web.Response(body=await self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
