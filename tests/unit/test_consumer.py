"""The shared stream consumer against a real redis-server: reclaim paging, forgetting consumers,
upkeep through errors, stopping during BLOCK, draining within the grace period."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sesflow.cli.embedded import free_port
from sesflow.common import consumer as consumer_module
from sesflow.common import scripts
from sesflow.common.consumer import (
    StreamConsumer,
    Upkeep,
    claim_page,
    consumer_client,
    consumer_name,
    forget_idle_consumers,
    periodic,
    until_stopped,
)
from sesflow.common.settings import Settings

GROUP = "workers"


class Recorder(StreamConsumer):
    """A consumer whose entries wait for `release` (when given), then are acknowledged."""

    group = GROUP
    role = "recorder"
    concurrency = 4

    def __init__(
        self,
        client: Any,
        settings: Settings,
        streams: list[str],
        *,
        consumer: str | None = None,
        release: asyncio.Event | None = None,
    ) -> None:
        super().__init__(client, settings, consumer=consumer)
        self._streams = streams
        self.release = release
        self.started: list[str] = []
        self.done: list[str] = []

    def streams(self) -> list[str]:
        return self._streams

    async def process(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        self.started.append(entry_id)
        if self.release is not None:
            await self.release.wait()
        await self.client.xack(stream, self.group, entry_id)
        self.done.append(entry_id)


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Wait until `check()` holds; raise when it does not within `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


async def finished(task: asyncio.Task[None], within: float) -> None:
    """Raise unless `task` ends within `within` seconds."""
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        task.cancel()
        raise AssertionError(f"did not end within {within} s")
    task.result()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Any]:
    client = consumer_client(settings)
    yield client
    await client.aclose()


async def pending_of(redis: Any, stream: str) -> dict[str, int]:
    return {c["name"]: int(c["pending"]) for c in await redis.xinfo_consumers(stream, GROUP)}


def test_consumer_names_are_unique_and_readable() -> None:
    names = {consumer_name() for _ in range(50)}
    assert len(names) == 50
    host, pid, suffix = next(iter(names)).rsplit("-", 2)
    assert host and pid.isdigit() and len(suffix) == 6


async def test_the_client_keeps_bytes_that_are_not_utf8(
    redis_url: str, client: Any, settings: Settings
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    await raw.xadd("s", {b"f": b"\xff\xfe ok"})
    await raw.aclose()
    [(_, fields)] = await client.xrange("s")
    assert fields["f"].encode("utf-8", "surrogateescape") == b"\xff\xfe ok"


async def test_reclaim_pages_through_a_dead_consumers_entries(redis: Any, client: Any) -> None:
    ids = [await redis.xadd("s", {"n": str(n)}) for n in range(7)]
    await redis.xgroup_create("s", GROUP, id="0")
    await redis.xreadgroup(GROUP, "dead", {"s": ">"})  # all 7 read, then the consumer died
    cursor, pages = "0-0", []
    while True:
        page = await claim_page(client, "s", GROUP, "heir", min_idle_ms=0, cursor=cursor, count=3)
        pages.append([entry_id for entry_id, _ in page.entries])
        cursor = page.cursor
        if cursor == "0-0":
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [entry_id for page in pages for entry_id in page] == ids
    assert await pending_of(redis, "s") == {"dead": 0, "heir": 7}


async def test_reclaim_leaves_entries_that_are_not_idle_long_enough(
    redis: Any, client: Any, settings: Settings
) -> None:
    await redis.xadd("s", {"n": "1"})
    await redis.xgroup_create("s", GROUP, id="0")
    await redis.xreadgroup(GROUP, "alive", {"s": ">"})
    heir = Recorder(client, settings, ["s"], consumer="heir")
    assert await heir.reclaim("s", min_idle_ms=60_000) == 0
    assert await pending_of(redis, "s") == {"alive": 1}


async def test_reclaimed_entries_are_handled_and_the_cursor_goes_on(
    redis: Any, client: Any, settings: Settings
) -> None:
    ids = [await redis.xadd("s", {"n": str(n)}) for n in range(6)]
    await redis.xgroup_create("s", GROUP, id="0")
    await redis.xreadgroup(GROUP, "dead", {"s": ">"})
    heir = Recorder(client, settings, ["s"], consumer="heir")
    # one page per call, as many as there are free slots (concurrency 4)
    assert await heir.reclaim("s", min_idle_ms=0) == 4
    await heir.drain()
    assert heir.reclaim_cursor["s"] != "0-0"
    assert await heir.reclaim("s", min_idle_ms=0) == 2
    await heir.drain()
    assert heir.reclaim_cursor["s"] == "0-0"
    assert sorted(heir.done) == ids
    assert (await redis.xpending("s", GROUP))["pending"] == 0


async def test_reclaim_before_the_group_exists_claims_nothing(
    client: Any, settings: Settings
) -> None:
    assert await Recorder(client, settings, ["s"]).reclaim("s", min_idle_ms=0) == 0


async def test_only_consumers_idle_and_holding_nothing_are_forgotten(redis: Any) -> None:
    await redis.xadd("s", {"n": "1"})
    await redis.xgroup_create("s", GROUP, id="0")
    await redis.xreadgroup(GROUP, "idle-holding", {"s": ">"})
    for name in ("idle-empty", "me", "active"):
        await redis.xgroup_createconsumer("s", GROUP, name)
    await asyncio.sleep(0.3)
    served = await redis.xadd("s", {"n": "2"})
    await redis.xreadgroup(GROUP, "active", {"s": ">"})  # seen just now
    await redis.xack("s", GROUP, served)
    gone = await forget_idle_consumers(redis, "s", GROUP, keep="me", idle_ms=200)
    assert gone == ["idle-empty"]
    assert await pending_of(redis, "s") == {"idle-holding": 1, "me": 0, "active": 0}


async def test_the_script_spares_a_consumer_that_read_since_it_was_listed(redis: Any) -> None:
    """Listed as idle and empty, then it read an entry: deleting it would drop that entry from
    the pending list, so the script checks again in the same step as the delete."""
    await redis.xgroup_create("s", GROUP, id="0", mkstream=True)
    await redis.xgroup_createconsumer("s", GROUP, "late")
    await asyncio.sleep(0.3)
    forget = scripts.register(redis, "forget_consumer")
    await redis.xadd("s", {"n": "1"})
    await redis.xreadgroup(GROUP, "late", {"s": ">"})  # after the listing, before the delete
    assert await forget(keys=["s"], args=[GROUP, "late", 200]) == 0
    assert await pending_of(redis, "s") == {"late": 1}
    assert await forget(keys=["s"], args=[GROUP, "gone-already", 200]) == 0
    await redis.xgroup_createconsumer("s", GROUP, "recent")
    assert await forget(keys=["s"], args=[GROUP, "recent", 200]) == 0
    await asyncio.sleep(0.3)
    assert await forget(keys=["s"], args=[GROUP, "recent", 200]) == 1
    assert await pending_of(redis, "s") == {"late": 1}


async def test_forgetting_consumers_of_a_missing_group_or_stream_does_nothing(redis: Any) -> None:
    assert await forget_idle_consumers(redis, "nothing", GROUP, keep="me", idle_ms=0) == []
    await redis.xadd("s", {"n": "1"})
    assert await forget_idle_consumers(redis, "s", GROUP, keep="me", idle_ms=0) == []


async def test_upkeep_keeps_running_through_redis_errors(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    """A refused connection, an error reply and a bug: each is logged, the job runs again."""
    gone = consumer_client(make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gone.ping()  # nothing listens there
        elif calls == 2:
            await redis.execute_command("NO-SUCH-COMMAND")
        elif calls == 3:
            raise ValueError("a bug in the job")
        await redis.incr("runs")

    stop = asyncio.Event()
    task = asyncio.create_task(periodic(Upkeep("test", 0.01, step), stop))
    await until(lambda: _runs_at_least(redis, 3))
    stop.set()
    await finished(task, 5)
    await gone.aclose()
    assert calls >= 6


async def _runs_at_least(redis: Any, n: int) -> bool:
    return int(await redis.get("runs") or 0) >= n


async def test_a_stream_that_fails_its_upkeep_does_not_stop_the_others(
    redis: Any, client: Any, settings: Settings
) -> None:
    await redis.set("bad", "not a stream")
    await redis.xadd("good", {"n": "1"})
    await redis.xgroup_create("good", GROUP, id="0")
    await redis.xgroup_createconsumer("good", GROUP, "old")
    consumer = Recorder(client, settings, ["bad", "good"], consumer="me")
    consumer.forget_idle_ms = 0
    with pytest.raises(ResponseError):
        await consumer.forget_idle_consumers("bad")
    job = consumer.per_stream("consumers", 0.01, consumer.forget_idle_consumers)
    stop = asyncio.Event()
    task = asyncio.create_task(periodic(job, stop))
    await until(lambda: _no_consumers(redis, "good"))
    stop.set()
    await finished(task, 5)


async def _no_consumers(redis: Any, stream: str) -> bool:
    return not await redis.xinfo_consumers(stream, GROUP)


async def test_new_entries_are_processed_and_acknowledged(
    redis: Any, client: Any, settings: Settings
) -> None:
    consumer = Recorder(client, settings, ["a", "b"])
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    ids = [await redis.xadd(stream, {"n": "1"}) for stream in ("a", "b", "a")]
    await until(lambda: _true(len(consumer.done) == 3))
    stop.set()
    await finished(task, 5)
    assert sorted(consumer.done) == sorted(ids)
    for stream in ("a", "b"):
        assert (await redis.xpending(stream, GROUP))["pending"] == 0


async def _true(value: bool) -> bool:
    return value


async def test_stop_during_a_blocking_read_ends_the_run_at_once(
    redis: Any, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With reads blocking for a minute, a stop still ends `run` within seconds: the blocking
    XREADGROUP is abandoned, not awaited."""
    monkeypatch.setattr(consumer_module, "READ_BLOCK_MS", 60_000)
    settings = make_settings(REDIS_SOCKET_TIMEOUT="120")
    client = consumer_client(settings)
    consumer = Recorder(client, settings, ["s"], consumer="blocked")
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await until(lambda: _blocked_in_xreadgroup(redis))
    stop.set()
    await finished(task, 10)
    await client.aclose()
    await until(lambda: _not(_blocked_in_xreadgroup(redis)))  # its connection was dropped


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def _blocked_in_xreadgroup(redis: Any) -> bool:
    clients = await redis.client_list()
    return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients)


async def stopped_with_work_in_hand(
    redis: Any, settings: Settings, kind: type[Recorder]
) -> tuple[Recorder, list[str], bool]:
    """A `kind` consumer on three entries, stopped once each has started, its work released
    0.2 s into the drain: the consumer, the entry ids, and whether it still ran then."""
    client = consumer_client(settings)
    release = asyncio.Event()
    consumer = kind(client, settings, ["s"], release=release)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    ids = [await redis.xadd("s", {"n": str(n)}) for n in range(3)]
    await until(lambda: _true(len(consumer.started) == 3))
    stop.set()
    await asyncio.sleep(0.2)
    running = not task.done()
    release.set()
    await finished(task, 10)
    await client.aclose()
    return consumer, ids, running


async def test_drain_finishes_in_flight_work_within_the_grace(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SHUTDOWN_GRACE="30")
    consumer, ids, running = await stopped_with_work_in_hand(redis, settings, Recorder)
    assert running  # waiting for the work in hand
    assert sorted(consumer.done) == ids
    assert (await redis.xpending("s", GROUP))["pending"] == 0


class HandingOn(Recorder):
    """A consumer whose entries finish in a task of their own, started as the first part of
    the work ends (as the sender's per-job loop takes over a read batch's job)."""

    async def process(self, stream: str, entry_id: str, fields: dict[str, str]) -> None:
        self.started.append(entry_id)
        assert self.release is not None
        await self.release.wait()
        task = asyncio.create_task(self.finish(stream, entry_id))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def finish(self, stream: str, entry_id: str) -> None:
        await asyncio.sleep(0.3)
        await self.client.xack(stream, self.group, entry_id)
        self.done.append(entry_id)


async def test_work_handed_on_during_the_drain_gets_the_rest_of_the_grace(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SHUTDOWN_GRACE="30")
    consumer, ids, _ = await stopped_with_work_in_hand(redis, settings, HandingOn)
    assert sorted(consumer.done) == ids
    assert (await redis.xpending("s", GROUP))["pending"] == 0


async def test_work_past_the_grace_is_cancelled_and_left_pending(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SHUTDOWN_GRACE="0.2")
    client = consumer_client(settings)
    consumer = Recorder(client, settings, ["s"], release=asyncio.Event())  # never released
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await redis.xadd("s", {"n": "1"})
    await until(lambda: _true(len(consumer.started) == 1))
    stop.set()
    await finished(task, 10)
    await client.aclose()
    assert consumer.done == [] and not consumer.inflight
    assert (await redis.xpending("s", GROUP))["pending"] == 1  # reclaimed later


async def test_a_reader_waits_out_an_outage_and_reads_on(
    redis: Any, client: Any, settings: Settings
) -> None:
    consumer = Recorder(client, settings, ["s"])
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await redis.xadd("s", {"n": "1"})
    await until(lambda: _true(len(consumer.done) == 1))
    await redis.client_kill_filter(_type="normal", skipme=True)  # every other connection
    await redis.xadd("s", {"n": "2"})
    await until(lambda: _true(len(consumer.done) == 2))
    stop.set()
    await finished(task, 5)


async def test_a_deleted_group_is_created_again(
    redis: Any, client: Any, settings: Settings
) -> None:
    """NOGROUP (someone deleted the stream): the reader creates the group again, reads on."""
    consumer = Recorder(client, settings, ["s"])
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await until(lambda: _has_group(redis, "s"))
    await redis.delete("s")
    await redis.xadd("s", {"n": "1"})
    await until(lambda: _true(len(consumer.done) == 1), within=15)
    stop.set()
    await finished(task, 5)


async def _has_group(redis: Any, stream: str) -> bool:
    return bool(await redis.exists(stream)) and bool(await redis.xinfo_groups(stream))


async def test_cancelling_run_without_a_stop_ends_the_readers_too(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(SHUTDOWN_GRACE="60")
    client = consumer_client(settings)
    task = asyncio.create_task(Recorder(client, settings, ["s"]).run(asyncio.Event()))
    await until(lambda: _has_group(redis, "s"))
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    await client.aclose()
    assert done and task.cancelled()


async def test_until_stopped_gives_up_after_within_and_cancels() -> None:
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    with pytest.raises(TimeoutError):
        await until_stopped(asyncio.Event(), hangs(), within=0.05)
    assert cancelled.is_set()
    assert await until_stopped(asyncio.Event(), asyncio.sleep(0, "answer"), within=5) == "answer"


async def test_until_stopped_answers_none_at_stop() -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(until_stopped(stop, asyncio.sleep(60, "late"), within=30))
    await asyncio.sleep(0.01)
    stop.set()
    assert await asyncio.wait_for(waiting, 5) is None
