"""Every HTTP role: `/health` (readiness) reports Redis reachability and answers 503 when Redis
is down or stuck; `/livez` (liveness) answers without Redis. Both are public."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sesflow.cli.embedded import free_port
from sesflow.common.connection import connect
from sesflow.common.settings import Settings
from sesflow.ingest.api import create_app as ingest_app
from sesflow.sender.metrics import create_app as sender_app
from sesflow.stats.api import create_app as stats_app
from sesflow.tracker.app import create_app as tracker_app


def sender_role(settings: Settings) -> web.Application:
    client = connect(settings)
    app = sender_app(settings, lambda: {"consumer": "c1"}, client=client)

    async def close(_: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close)
    return app


ROLES: dict[str, Callable[[Settings], web.Application]] = {
    "ingest": ingest_app,
    "tracker": tracker_app,
    "stats": stats_app,
    "sender": sender_role,
}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections, never answers: a stuck Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def get(settings: Settings, role: str, path: str) -> tuple[int, dict[str, Any], float]:
    client: TestClient[Any, Any] = TestClient(TestServer(ROLES[role](settings)))
    await client.start_server()
    try:
        started = time.monotonic()
        resp = await asyncio.wait_for(client.get(path), timeout=20)
        return resp.status, await resp.json(), time.monotonic() - started
    finally:
        await client.close()


@pytest.mark.parametrize("role", ROLES)
async def test_health_reports_redis_and_livez_answers(make_settings: Any, role: str) -> None:
    settings = make_settings(
        API_KEY="health-test-api-key", JWT_SECRET="a-jwt-secret-of-at-least-32-bytes!"
    )
    status, body, _ = await get(settings, role, "/health")
    assert (status, body["status"], body["redis"]) == (200, "ok", "ok")
    status, body, _ = await get(settings, role, "/livez")
    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.parametrize("role", ROLES)
async def test_health_is_503_when_redis_is_down_and_livez_is_not(
    make_settings: Any, role: str
) -> None:
    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    status, body, _ = await get(settings, role, "/health")
    assert status == 503
    assert (body["status"], body["redis"], body["error"]) == (
        "unavailable",
        "unreachable",
        "unavailable",
    )
    assert body["detail"]
    status, _, _ = await get(settings, role, "/livez")
    assert status == 200


@pytest.mark.parametrize("role", ROLES)
async def test_health_notices_a_stuck_redis_within_a_few_seconds(
    make_settings: Any, role: str, silent_port: int
) -> None:
    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{silent_port}/0")
    status, body, took = await get(settings, role, "/health")
    assert status == 503 and body["redis"] == "unreachable"
    assert took < 5
    status, _, took = await get(settings, role, "/livez")
    assert status == 200 and took < 5
