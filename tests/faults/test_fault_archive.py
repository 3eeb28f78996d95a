"""Fault: the archive writer (in the stats process) is killed with SIGKILL, or Redis restarts,
mid-campaign; on SQLite and on Postgres. Afterwards every entry ever added to `events` is in
the archive exactly once (its unique key is the entry id, so "exactly once" is: the same set of
ids), and the recipients' rows agree with what was sent.

A consumer group that never reads (`OBSERVER`) keeps the stream from being trimmed, so the test
can list every entry at the end."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from sesflow.cli.embedded import RedisProcess
from sesflow.common.keys import Keys
from sesflow.common.settings import settings_from_mapping
from sesflow.stats.archive.db import connect_archive

from support.archivekit import unarchived
from support.faultkit import (
    UNREACHABLE,
    all_sent_once,
    emails_for,
    post_campaign,
    sent_count,
    start_roles,
    wait_exit,
)
from support.postgres import archive_url, postgres_server
from support.procs import Cluster
from support.stubprocess import StubProcess
from support.until import until

__all__ = ["archive_url", "postgres_server"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RATE = 300
RECIPIENTS = 1500
OBSERVER = "fault-observer"
EVENTS = Keys().partition(0).events


async def check_archived_exactly_once(
    client: aioredis.Redis, cluster: Cluster, url: str, msg_id: str
) -> None:
    await until(
        lambda: unarchived(client, Keys()),
        lambda behind: not behind,
        what="the archive to store and acknowledge every event",
        within=60,
        ignore=UNREACHABLE,
        context=cluster.all_logs,
    )
    added = sorted(str(entry_id) for entry_id, _ in await client.xrange(EVENTS) or [])
    db = await connect_archive(settings_from_mapping({"ARCHIVE_URL": url}))
    try:
        rows = await db.fetch("SELECT partition, entry_id FROM events")
        assert {row["partition"] for row in rows} == {0}
        assert sorted(row["entry_id"] for row in rows) == added
        sent = await db.fetch(
            "SELECT count(*) AS n, count(DISTINCT idx) AS recipients FROM events "
            "WHERE msg_id = $1 AND type = 'sent'",
            msg_id,
        )
        assert sent == [{"n": RECIPIENTS, "recipients": RECIPIENTS}]
        states = await db.fetch(
            "SELECT state, count(*) AS n, count(DISTINCT ses_id) AS ses_ids FROM recipients "
            "WHERE msg_id = $1 GROUP BY state",
            msg_id,
        )
        assert states == [{"state": "sent", "n": RECIPIENTS, "ses_ids": RECIPIENTS}]
        message = await db.fetchone("SELECT topic, total FROM messages WHERE msg_id = $1", msg_id)
        assert message is not None and message["total"] == RECIPIENTS
    finally:
        await db.close()


async def start_campaign(
    client: aioredis.Redis, http: aiohttp.ClientSession, cluster: Cluster, topic: str
) -> tuple[str, list[str]]:
    await client.xgroup_create(EVENTS, OBSERVER, id="0", mkstream=True)
    emails = emails_for(topic, RECIPIENTS)
    return await post_campaign(http, cluster, topic, emails), emails


async def test_stats_killed_mid_campaign(
    redis_url: str,
    archive_url: str,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
) -> None:
    stub = make_stub(rate=RATE * 2, latency_ms=10)
    cluster = make_cluster(
        redis_url, stub, EMAIL_RATE=str(RATE), RECLAIM_IDLE="2", ARCHIVE_URL=archive_url
    )
    start_roles(cluster, senders=1)
    stats = next(p for p in cluster.procs if p.role == "stats")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id, emails = await start_campaign(client, http, cluster, "archive-kill")
            await until(lambda: sent_count(stub), lambda n: n >= 400, what="400 sends")
            stats.signal(signal.SIGKILL)
            assert await wait_exit(stats, 10) == -signal.SIGKILL
            cluster.procs.remove(stats)  # gone on purpose
            await asyncio.sleep(1.0)  # events go on piling up meanwhile
            cluster.start("stats", name="stats-again")
            cluster.wait_listening(["stats"])
            await all_sent_once(client, stub, cluster, msg_id, emails)
            await check_archived_exactly_once(client, cluster, archive_url, msg_id)
        finally:
            await client.aclose()


async def test_redis_restart_mid_campaign(
    aof_redis: RedisProcess,
    archive_url: str,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
) -> None:
    stub = make_stub(rate=RATE * 2, latency_ms=10)
    cluster = make_cluster(
        aof_redis.url, stub, EMAIL_RATE=str(RATE), RECLAIM_IDLE="3", ARCHIVE_URL=archive_url
    )
    start_roles(cluster, senders=1)
    client = aioredis.Redis.from_url(aof_redis.url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id, emails = await start_campaign(client, http, cluster, "archive-redis")
            await until(lambda: sent_count(stub), lambda n: n >= 400, what="400 sends")
            await asyncio.to_thread(aof_redis.stop)
            await asyncio.sleep(3.0)
            assert all(p.running for p in cluster.procs), cluster.all_logs()
            await asyncio.to_thread(aof_redis.start)
            await all_sent_once(client, stub, cluster, msg_id, emails)
            await check_archived_exactly_once(client, cluster, archive_url, msg_id)
            assert all(p.running for p in cluster.procs), cluster.all_logs()
        finally:
            await client.aclose()
