"""Scheduled sends and cancel through the whole ingest process (API, dispatcher, scheduler)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from sesflow.cli.embedded import free_port
from sesflow.common.keys import Keys, PartitionKeys
from sesflow.common.settings import Settings
from sesflow.ingest.__main__ import run
from sesflow.ingest.scheduler import Scheduler

from support.ingestkit import queued, read_events
from support.until import until


@pytest.fixture
async def ingest(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """The ingest role running in this event loop; yields its base URL."""
    settings = make_settings(INGEST_PORT=free_port(), SHUTDOWN_GRACE=2)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    url = f"http://127.0.0.1:{settings.ingest_port}"
    async with aiohttp.ClientSession() as http:

        async def up() -> bool:
            try:
                async with http.get(f"{url}/health") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await until(up)
    yield url
    stop.set()
    await asyncio.wait_for(task, 10)


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/v1/messages", json=body) as r:
        return r.status, await r.json()


def message(topic: str, emails: list[str], scheduled_at: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"topic_id": topic, "emails": emails, "subject": "S", "content": "C"}
    if scheduled_at:
        body["scheduled_at"] = scheduled_at
    return {"messages": [body]}


async def test_scheduled_send_is_promoted_on_time(
    ingest: str, redis: Any, p: PartitionKeys
) -> None:
    due = time.time() + 1.5
    at = datetime.fromtimestamp(due, tz=UTC).isoformat(timespec="milliseconds")
    status, answer = await post(ingest, message("later", ["a@x.io", "b@x.io"], at))
    assert status == 202
    await until(lambda: redis.zcard(p.schedule))  # dispatched onto the schedule
    # The content hash keeps the time asked for (the archive's `scheduled_at_ms`).
    msg_id = answer["messages"][0]["id"]
    assert await redis.hget(p.message(msg_id), "scheduled_ms") == str(int(due * 1000))
    while time.time() < due - 0.25:
        assert await queued(redis, p) == 0, "promoted before its time"
        await asyncio.sleep(0.05)

    async def promoted() -> bool:
        return bool(await queued(redis, p) == 2)

    await until(promoted, within=3.0)
    assert time.time() - due < 1.0
    assert await redis.zcard(p.schedule) == 0


async def test_immediate_send_reaches_sends(ingest: str, redis: Any, p: PartitionKeys) -> None:
    status, answer = await post(ingest, message("now", ["a@x.io", "b@x.io", "c@x.io"]))
    assert status == 202 and answer["count"] == 3

    async def all_queued() -> bool:
        return bool(await queued(redis, p) == 3)

    await until(all_queued)


async def test_cancel_removes_scheduled_recipients(
    ingest: str, redis: Any, p: PartitionKeys
) -> None:
    emails = [f"u{n}@x.io" for n in range(1200)]
    await post(ingest, message("promo", emails, "2999-01-01 00:00:00"))
    await post(ingest, message("other", ["z@x.io"], "2999-01-01 00:00:00"))

    async def scheduled() -> bool:
        return bool(await redis.zcard(p.schedule) == 4)

    await until(scheduled)
    async with aiohttp.ClientSession() as http, http.delete(f"{ingest}/v1/topics/promo") as r:
        assert r.status == 200
        assert (await r.json())["stopped"] == 1200
    assert await redis.zcard(p.schedule) == 1  # the other topic's chunk stays
    stopped = [e for e in await read_events(redis, p) if e.type == "stopped"]
    assert [(e.topic, e.n) for e in stopped] == [("promo", 1200)]


async def test_scheduler_moves_every_due_chunk_in_one_tick(redis: Any, keys: Keys) -> None:
    p = keys.partition(0)
    due = int(time.time() * 1000) - 1
    members = {f"{n}-0:0": due for n in range(1, 46)}
    await redis.zadd(p.schedule, members)
    await redis.hset(p.schedule_data, mapping=dict.fromkeys(members, "a@x.io"))
    assert await Scheduler(redis, keys).tick() == 45
    assert await redis.zcard(p.schedule) == 0


async def test_scheduler_survives_redis_being_unreachable(make_settings: Any) -> None:
    from sesflow.common.consumer import consumer_client

    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = consumer_client(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(Scheduler(client, Keys()).run(stop))
    await asyncio.sleep(0.5)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)
    await client.aclose()
