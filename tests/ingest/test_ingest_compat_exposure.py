"""The compatibility hop exposes nothing: no credentials to the public tracker, no internal
address to a caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sesflow.cli.embedded import free_port
from sesflow.common.settings import Settings

KEY = "ingest-test-api-key"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A fake role recording the headers of each request."""
    seen: list[dict[str, str]] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), seen
    await server.close()


async def test_credentials_reach_stats_but_not_the_tracker(
    api_client: Callable[[Settings], Any],
    make_settings: Callable[..., Settings],
    upstream: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = upstream
    settings = make_settings(STATS_URL=url, TRACKER_URL=url, API_KEY=KEY)
    headers = {"x-api-key": KEY, "Authorization": "Bearer abc", "Cookie": "s=1"}
    async with api_client(settings) as http:
        assert (await http.get("/v1/events/open?requestId=7", headers=headers)).status == 200
        assert (await http.get("/v1/results/sent", headers=headers)).status == 200
    to_tracker, to_stats = seen
    assert not {"x-api-key", "authorization", "cookie"} & set(to_tracker)
    assert to_stats["x-api-key"] == KEY  # stats checks the same key


async def test_an_absent_role_does_not_reveal_its_address(
    api_client: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    port = free_port()
    async with api_client(make_settings(TRACKER_URL=f"http://127.0.0.1:{port}")) as http:
        resp = await http.get("/v1/events/open?requestId=7")
        assert resp.status == 502
        body = await resp.json()
        assert body["error"] == "upstream_unavailable"
        assert str(port) not in body["detail"] and "127.0.0.1" not in body["detail"]
