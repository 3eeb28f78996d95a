"""Reclaim, keep-alive, trimming, quota and metrics of the sender, against the real redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from sesflow.cli.embedded import free_port
from sesflow.common.aws import Quota
from sesflow.common.connection import ensure_group
from sesflow.common.keys import SENDERS_GROUP, Keys
from sesflow.common.runtime import start_site
from sesflow.common.ses_suppressions import SesMirrorError
from sesflow.common.settings import Settings
from sesflow.sender import upkeep
from sesflow.sender.metrics import create_app
from sesflow.sender.rate_limit import HEADROOM
from sesflow.sender.worker import Sender

from support.senderkit import FakeSes, Running, pending_count, queue_jobs, reasons, states
from support.until import until

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
EMAILS = [f"user{n}@example.org" for n in range(4)]

Start = Callable[[Sender], Running]


async def ghost_reads(redis: Any, count: int, times: int = 1) -> None:
    """A consumer that reads entries and dies; `times` > 1 redelivers them to it again."""
    await ensure_group(redis, PART.sends, SENDERS_GROUP)
    rows = await redis.xreadgroup(SENDERS_GROUP, "ghost", {PART.sends: ">"}, count=count)
    ids = [eid for eid, _ in rows[0][1]]
    for _ in range(times - 1):
        await redis.xclaim(PART.sends, SENDERS_GROUP, "ghost", 0, ids)


async def test_jobs_of_a_vanished_consumer_are_reclaimed_and_sent(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS)
    await ghost_reads(redis, 2)
    run = running(make_sender(sender_settings(RECLAIM_IDLE="0.5")))
    await until(lambda: final_count(redis, msg_id, 4))
    await until(lambda: no_pending(redis))
    await run.stop()
    assert fake_ses.sent == {e: 1 for e in EMAILS}


async def final_count(redis: Any, msg_id: str, count: int) -> bool:
    found = await states(redis, PART, msg_id)
    return sum(1 for v in found.values() if not v.startswith("i:")) == count


async def no_pending(redis: Any) -> bool:
    return await pending_count(redis, PART) == 0


async def test_after_max_attempts_deliveries_a_job_is_dead_lettered_as_failed(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    await ghost_reads(redis, 1, times=3)  # delivered 3 times; the reclaim is the 4th
    run = running(make_sender(sender_settings(RECLAIM_IDLE="0.3", MAX_ATTEMPTS="3")))
    await until(lambda: final_count(redis, msg_id, 1))
    await run.stop()
    assert (await states(redis, PART, msg_id))[0] == "f" and (await reasons(redis, PART, msg_id))[
        0
    ] == "max_attempts"
    assert not fake_ses.calls
    (dead,) = await redis.xrange(PART.sends_dead)
    assert dead[1]["reason"] == "max_attempts" and dead[1]["e"] == EMAILS[0]
    assert await pending_count(redis, PART) == 0


async def test_keepalive_resets_idle_without_counting_a_delivery(
    redis: Any, sender_settings: Any, make_sender: Any
) -> None:
    await queue_jobs(redis, KEYS, EMAILS[:1])
    sender = make_sender(sender_settings())
    await ensure_group(redis, PART.sends, SENDERS_GROUP)
    rows = await redis.xreadgroup(SENDERS_GROUP, sender.consumer, {PART.sends: ">"}, count=1)
    entry_id = rows[0][1][0][0]
    sender.held[0].add(entry_id)
    await asyncio.sleep(0.3)
    await upkeep.refresh_claims(sender)
    (row,) = await redis.xpending_range(PART.sends, SENDERS_GROUP, "-", "+", 10)
    assert row["time_since_delivered"] < 250
    assert row["times_delivered"] == 1


async def test_a_keepalive_that_loses_its_cancellation_still_ends_at_stop(
    redis: Any,
    sender_settings: Any,
    make_sender: Any,
    running: Start,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Python 3.11 a cancellation can be lost inside a redis-py command (`asyncio.wait_for`
    around its write returns the write's result instead): the keep-alive, cancelled last at
    stop, must end anyway, or the process would ignore SIGTERM."""
    sender = make_sender(sender_settings(RECLAIM_IDLE="0.3"))
    sender.held[0].add("1-0")  # something to keep alive: the keep-alive calls XCLAIM
    in_call, lost = asyncio.Event(), asyncio.Event()

    async def xclaim_losing_a_cancellation(*args: Any, **kwargs: Any) -> list[str]:
        if lost.is_set():
            return []
        in_call.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            lost.set()  # the cancellation goes no further: the call returns
        return []

    monkeypatch.setattr(sender.client, "xclaim", xclaim_losing_a_cancellation)
    run = running(sender)
    await asyncio.wait_for(in_call.wait(), 5)
    await run.stop()
    assert lost.is_set()


async def test_a_job_waiting_on_a_long_pause_is_not_stolen(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start
) -> None:
    """Sender A holds a job through a pause longer than RECLAIM_IDLE; sender B never takes it."""
    settings = sender_settings(RECLAIM_IDLE="0.6", SENDER_CONCURRENCY="1")
    ses_a, ses_b = FakeSes(), FakeSes()
    a = make_sender(settings, ses=ses_a, consumer="a")
    await a.limiter.pause(2.0)
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    run_a = running(a)
    await until(lambda: held(a))
    run_b = running(make_sender(settings, ses=ses_b, consumer="b"))
    await until(lambda: final_count(redis, msg_id, 1))
    await run_a.stop()
    await run_b.stop()
    assert ses_a.sent == {EMAILS[0]: 1} and not ses_b.calls


async def blocked_clients(redis: Any) -> int:
    return int((await redis.info("clients"))["blocked_clients"])


async def held(sender: Sender) -> bool:
    return bool(sender.held[0])


async def test_after_a_redis_outage_no_reclaim_before_live_replicas_refresh(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start, fake_ses: FakeSes
) -> None:
    """Right after an outage every live replica's entries look idle (no keep-alive could run).
    Replica A is inside its SES call; B, which just saw Redis come back, must leave A's job alone
    for RECLAIM_IDLE (A's keep-alive refreshes it meanwhile); only a job nobody refreshes is
    taken then, and marked unknown."""
    settings = sender_settings(RECLAIM_IDLE="1.0")
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:1])
    await ensure_group(redis, PART.sends, SENDERS_GROUP)
    rows = await redis.xreadgroup(SENDERS_GROUP, "a", {PART.sends: ">"}, count=1)
    entry_id = rows[0][1][0][0]
    claim = f"i:{int(time.time() * 1000) - 5000}:a"  # claimed before the outage
    await redis.hset(PART.state(msg_id), "0", claim)
    await asyncio.sleep(1.1)  # the outage: A's entry goes idle past RECLAIM_IDLE

    b = make_sender(settings, consumer="b")
    await b.wait_for_redis(None)  # B sees Redis back
    back = time.monotonic()
    running(b)
    # B's reader decides on a reclaim pass, then blocks in XREADGROUP: once it blocks, a
    # reclaim "at once" has happened or not.
    await until(lambda: blocked_clients(redis), what="B's reader waiting for new jobs")
    owners = [
        r["consumer"] for r in await redis.xpending_range(PART.sends, SENDERS_GROUP, "-", "+", 10)
    ]
    assert owners == ["a"], "B took A's job at once"
    assert (await states(redis, PART, msg_id))[0] == claim
    await redis.xclaim(PART.sends, SENDERS_GROUP, "a", 0, [entry_id], justid=True)  # A's keep-alive

    await until(lambda: final_count(redis, msg_id, 1), within=10)  # A never refreshes again
    assert time.monotonic() - back >= 1.0
    assert (await states(redis, PART, msg_id))[0] == "u" and not fake_ses.calls


async def test_trim_never_removes_a_pending_entry(redis: Any) -> None:
    _, ids = await queue_jobs(redis, KEYS, [f"t{n}@example.org" for n in range(10)])
    await ensure_group(redis, PART.sends, SENDERS_GROUP)
    assert await upkeep.trim(redis, PART) == 0  # nothing delivered yet
    rows = await redis.xreadgroup(SENDERS_GROUP, "c", {PART.sends: ">"}, count=6)
    read = [eid for eid, _ in rows[0][1]]
    await redis.xack(PART.sends, SENDERS_GROUP, *read[:2], read[3])  # read[2] stays pending
    assert await upkeep.trim(redis, PART) == 2
    remaining = [eid for eid, _ in await redis.xrange(PART.sends)]
    assert remaining == ids[2:]
    await redis.xack(PART.sends, SENDERS_GROUP, read[2], read[4], read[5])
    assert await upkeep.trim(redis, PART) == 4  # up to the last delivered, not beyond
    assert [eid for eid, _ in await redis.xrange(PART.sends)] == ids[6:]


async def test_quota_caps_the_rate_and_pauses_when_the_day_is_used_up(
    redis: Any, sender_settings: Any, make_sender: Any
) -> None:
    quota = Quota(max_send_rate=7, max_24h_send=100, sent_last_24h=10, source="test")

    async def fetch(_: Settings) -> Quota | None:
        return quota

    sender = make_sender(sender_settings(EMAIL_RATE="50"), fetch_quota=fetch)
    await upkeep.refresh_quota(sender)
    status = await sender.limiter.status()
    assert status.rate == pytest.approx(7 * HEADROOM) and status.paused_s == 0
    quota = Quota(max_send_rate=7, max_24h_send=100, sent_last_24h=100, source="test")
    await upkeep.refresh_quota(sender)
    assert (await sender.limiter.status()).paused_s > 50


async def test_idle_consumers_holding_nothing_are_forgotten(
    redis: Any, sender_settings: Any, make_sender: Any, monkeypatch: Any
) -> None:
    await queue_jobs(redis, KEYS, EMAILS[:1])
    await ghost_reads(redis, 1)
    await redis.xreadgroup(SENDERS_GROUP, "idle-empty", {PART.sends: ">"}, count=1)
    monkeypatch.setattr(upkeep, "FORGET_CONSUMER_AFTER_S", 0.0)
    await asyncio.sleep(0.01)
    await upkeep.forget_consumers(make_sender(sender_settings()))
    names = {c["name"] for c in await redis.xinfo_consumers(PART.sends, SENDERS_GROUP)}
    assert names == {"ghost"}  # it still holds a job


async def test_metrics_and_health_are_served(
    redis: Any, sender_settings: Any, make_sender: Any, running: Start
) -> None:
    settings = sender_settings(SENDER_METRICS_PORT=str(free_port()))
    sender = make_sender(settings)
    msg_id, _ = await queue_jobs(redis, KEYS, EMAILS[:2])
    run = running(sender)
    await until(lambda: final_count(redis, msg_id, 2))
    await upkeep.update_gauges(sender)
    runner = await start_site(
        create_app(settings, sender.health, client=redis), "127.0.0.1", settings.sender_metrics_port
    )
    try:
        base = f"http://127.0.0.1:{settings.sender_metrics_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            async with http.get(f"{base}/health") as resp:
                health = await resp.json()
    finally:
        await runner.cleanup()
        await run.stop()
    assert 'sesflow_sends_total{outcome="sent"}' in text
    assert f"sesflow_rate_effective_per_second {1000 * HEADROOM}" in text
    assert health["status"] == "ok" and health["consumer"] == sender.consumer


async def test_one_replica_per_interval_imports_the_ses_suppression_list(
    redis: Any, sender_settings: Any, make_sender: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    imported: list[str] = []

    async def fake_import(settings: Settings, suppressions: Any) -> tuple[int, int]:
        imported.append(settings.redis_prefix)
        return 0, 0

    monkeypatch.setattr(upkeep, "import_from_ses", fake_import)
    await redis.delete(KEYS.ses_suppression_sync)
    settings = sender_settings(SES_SUPPRESSION_SYNC="1", SES_SUPPRESSION_SYNC_INTERVAL="60")
    first, second = make_sender(settings), make_sender(settings)
    assert await upkeep.sync_ses(first) and not await upkeep.sync_ses(second)
    assert not await upkeep.sync_ses(first)  # the interval is not over for anyone
    assert imported == ["sesflow"]
    assert 0 < await redis.pttl(KEYS.ses_suppression_sync) <= 60_000

    async def failing(settings: Settings, suppressions: Any) -> tuple[int, int]:
        raise SesMirrorError("SES said no")

    monkeypatch.setattr(upkeep, "import_from_ses", failing)
    await redis.delete(KEYS.ses_suppression_sync)
    assert not await upkeep.sync_ses(first)
    assert not await redis.exists(KEYS.ses_suppression_sync)  # the next look tries again
