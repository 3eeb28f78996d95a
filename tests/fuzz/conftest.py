"""The three HTTP roles in-process, on one real redis-server: ingest forwards the compatibility
paths to the tracker and stats apps started beside it, so the forward is fuzzed too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sesflow.common.settings import Settings
from sesflow.ingest.api import create_app as create_ingest
from sesflow.stats.api import create_app as create_stats
from sesflow.tracker.app import create_app as create_tracker

from support.apptest import AppTestServer
from support.fuzzkit import API_KEY, JWT_SECRET, Roles
from support.snssign import SnsSigner


async def no_quota(_: Settings) -> None:
    return None


async def started(app: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(AppTestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def roles(make_settings: Callable[..., Settings]) -> AsyncIterator[Roles]:
    signer = SnsSigner()
    async with signer.serve():
        # With credentials required, so that the auth checks are fuzzed too; the requests carry
        # the key unless a header drawn replaces it.
        base = make_settings(
            SNS_CERT_URL_PATTERN=signer.pattern,
            SNS_TOPIC_ARNS=signer.topic_arn,
            API_KEY=API_KEY,
            JWT_SECRET=JWT_SECRET,
            ALLOW_UNSIGNED_OPENS="1",  # off by default; on here, so that its path is fuzzed
        )
        tracker = await started(create_tracker(base))
        stats = await started(create_stats(base, quota_fetcher=no_quota))
        settings = make_settings(
            SNS_CERT_URL_PATTERN=signer.pattern,
            SNS_TOPIC_ARNS=signer.topic_arn,
            API_KEY=API_KEY,
            JWT_SECRET=JWT_SECRET,
            TRACKER_URL=str(tracker.make_url("")).rstrip("/"),
            STATS_URL=str(stats.make_url("")).rstrip("/"),
        )
        ingest = await started(create_ingest(settings))
        try:
            yield Roles(ingest, tracker, stats, signer, settings)
        finally:
            for client in (ingest, tracker, stats):
                await client.close()
