"""The webhook calls' connection pools against a real loopback server: connections are reused
and bounded per endpoint, every new connection passes the SSRF guard (a name that resolves to a
private address is refused at connect time, DNS rebinding included), and an endless answer is
cut."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from sesflow.cli.embedded import free_port
from sesflow.stats.webhooks.pools import MAX_ANSWER, CallFailed, EndpointPools


class Server:
    def __init__(self) -> None:
        self.peers: set[Any] = set()
        self.hosts: list[str] = []
        self.calls = 0
        self.big = False
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        self.hosts.append(request.headers["host"])
        self.calls += 1
        await asyncio.sleep(0.01)
        if not self.big:
            return web.Response(status=204)
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        for _ in range(64):  # 4 MB, never read whole
            await resp.write(b"x" * 65536)
        return resp


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    app = web.Application()
    app.router.add_post("/hook", s.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    s.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", s.port).start()
    yield s
    await runner.cleanup()


class Rebinding(AbstractResolver):
    """`hooks.example` resolves to loopback: as if its DNS changed since registration."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        assert host == "hooks.example"
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


def pools(allow_private: bool, per_endpoint: int = 4) -> EndpointPools:
    return EndpointPools(
        allow_private=allow_private, timeout=5, per_endpoint=per_endpoint, resolver=Rebinding()
    )


async def test_connections_are_reused_and_bounded_per_endpoint(server: Server) -> None:
    p = pools(allow_private=True, per_endpoint=4)
    url = f"http://127.0.0.1:{server.port}/hook"
    try:
        statuses = await asyncio.gather(*[p.post("ep_1", url, {}, b"{}") for _ in range(60)])
    finally:
        await p.close()
    assert statuses == [204] * 60 and server.calls == 60
    assert len(server.peers) <= 4  # WEBHOOK_CONCURRENCY connections, reused


async def test_a_name_resolving_to_a_private_address_is_refused_at_connect(
    server: Server,
) -> None:
    guarded = pools(allow_private=False)
    try:
        with pytest.raises(CallFailed, match="private or reserved"):
            await guarded.post("ep_1", f"https://hooks.example:{server.port}/hook", {}, b"{}")
        with pytest.raises(CallFailed, match="private or reserved"):
            await guarded.post("ep_2", f"https://127.0.0.1:{server.port}/hook", {}, b"{}")
    finally:
        await guarded.close()
    assert server.calls == 0
    # Allowed (tests, local development), the same name connects through the resolver.
    allowed = pools(allow_private=True)
    try:
        url = f"http://hooks.example:{server.port}/hook"
        assert await allowed.post("ep_1", url, {}, b"{}") == 204
    finally:
        await allowed.close()
    assert server.hosts == [f"hooks.example:{server.port}"]


async def test_an_endless_answer_is_cut(server: Server) -> None:
    server.big = True
    p = pools(allow_private=True)
    try:
        url = f"http://127.0.0.1:{server.port}/hook"
        assert await p.post("ep_1", url, {}, b"{}") == 200
        assert await p.post("ep_1", url, {}, b"{}") == 200  # on a new connection
    finally:
        await p.close()
    assert len(server.peers) == 2
    assert MAX_ANSWER < 4 * 1024 * 1024
