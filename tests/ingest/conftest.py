"""Fixtures of the ingest tests: key names, the aiohttp test client, event readers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sesflow.common.connection import ensure_group
from sesflow.common.consumer import consumer_client
from sesflow.common.keys import DISPATCH_GROUP, Keys, PartitionKeys
from sesflow.common.settings import Settings
from sesflow.ingest.api import create_app
from sesflow.ingest.dispatcher import Dispatcher

from support.apptest import AppTestServer


@pytest.fixture
def keys() -> Keys:
    return Keys("sesflow", 1)


@pytest.fixture
def p(keys: Keys) -> PartitionKeys:
    return keys.partition(0)


@pytest.fixture
def api_client() -> Callable[[Settings], Any]:
    """`async with api_client(settings) as http:` a TestClient on `create_app(settings)`."""

    class Context:
        def __init__(self, settings: Settings) -> None:
            self.client = TestClient(AppTestServer(create_app(settings)))

        async def __aenter__(self) -> TestClient[Any, Any]:
            await self.client.start_server()
            return self.client

        async def __aexit__(self, *exc: object) -> None:
            await self.client.close()

    return Context


@pytest.fixture
async def http(api_client: Callable[[Settings], Any], settings: Settings) -> AsyncIterator[Any]:
    async with api_client(settings) as client:
        yield client


@pytest.fixture
async def dispatcher(settings: Settings, keys: Keys) -> AsyncIterator[Dispatcher]:
    client = consumer_client(settings)
    await ensure_group(client, keys.requests, DISPATCH_GROUP)
    yield Dispatcher(client, settings, keys, consumer="test")
    await client.aclose()
