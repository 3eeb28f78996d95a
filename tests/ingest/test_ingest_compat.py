"""The older services' single base URL: ingest forwards stats and tracking paths to their roles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sesflow.cli.embedded import free_port
from sesflow.common.settings import Settings


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """One fake role answering every path, recording what it was asked."""
    seen: list[tuple[str, str, bytes]] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path, await request.read()))
        if request.path.endswith("/open"):
            return web.Response(body=b"GIF89a", content_type="image/gif")
        return web.json_response({"path": request.path}, status=201, headers={"X-Role": "up"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), seen
    await server.close()


async def test_compatibility_paths_reach_their_roles(
    api_client: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    upstream: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    url, seen = upstream
    settings = make_settings(STATS_URL=url, TRACKER_URL=url, API_KEY="ingest-test-api-key")
    async with api_client(settings) as http:
        resp = await http.get(
            "/v1/results/count/plan-1", headers={"x-api-key": "ingest-test-api-key"}
        )
        assert resp.status == 201 and resp.headers["X-Role"] == "up"
        assert await resp.json() == {"path": "/v1/results/count/plan-1"}
        # Stats paths keep ingest's auth; tracking and the SNS webhook stay public.
        assert (await http.get("/v1/topics/t1")).status == 401
        resp = await http.get("/v1/events/open?requestId=7")
        assert resp.status == 200 and await resp.read() == b"GIF89a"
        resp = await http.post("/v1/events/result", data=b'{"Type":"Notification"}')
        assert resp.status == 201
        # A topic id with reserved characters reaches stats as it was sent, still encoded.
        resp = await http.get(
            "/v1/topics/a%2Fb%3Fx=1", headers={"x-api-key": "ingest-test-api-key"}
        )
        assert resp.status == 201
    assert seen == [
        ("GET", "/v1/results/count/plan-1", b""),
        ("GET", "/v1/events/open?requestId=7", b""),
        ("POST", "/v1/events/result", b'{"Type":"Notification"}'),
        ("GET", "/v1/topics/a%2Fb%3Fx=1", b""),
    ]


async def test_an_absent_role_is_a_502(
    api_client: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with api_client(make_settings(STATS_URL=closed)) as http:
        resp = await http.get("/v1/results/sent?hours=1")
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_unavailable"
