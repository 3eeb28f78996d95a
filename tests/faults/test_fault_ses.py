"""Fault: SES pushes back. It throttles a fifth of the calls, or pauses the account for five
seconds; in both cases nothing may fail, everything is delivered exactly once, and the senders
slow down or stop as a whole instead of hammering SES."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.faultkit import (
    UNREACHABLE,
    all_sent_once,
    check_nothing_pending,
    check_stats_agree,
    emails_for,
    is_final,
    post_campaign,
    sent_count,
    start_roles,
    states,
)
from support.procs import Cluster
from support.stubprocess import StubProcess
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE = 200
BURST = 1
# SES's own limit far above EMAIL_RATE, so that the stub measures the senders' rate rather than
# enforcing one (and its GetAccount does not cap them below EMAIL_RATE).
SES_RATE = 5000


async def test_throttling_slows_down_and_fails_nothing(
    redis_url: str, make_stub: Callable[..., StubProcess], make_cluster: Callable[..., Cluster]
) -> None:
    """20% of calls answered 429: retried until sent, none counted failed, and in no second did
    SES accept more than EMAIL_RATE + 5% (+ EMAIL_BURST) recipients (a gather step's sends may be
    up to 40 ms after their slots)."""
    stub = make_stub(rate=SES_RATE, latency_ms=20, error_rate=0.2, error_status=429)
    cluster = make_cluster(redis_url, stub, EMAIL_RATE=str(RATE), EMAIL_BURST=str(BURST))
    start_roles(cluster, senders=2)
    topic, recipients = "throttled", 1000
    emails = emails_for(topic, recipients)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id = await post_campaign(http, cluster, topic, emails)
            verdict = await all_sent_once(client, stub, cluster, msg_id, emails)
            stats = await stub.stats()
            assert stats["injected_errors"] >= 20, stats  # it really throttled (bulk: ~10 a call)
            per_second = stats["per_second"]
            assert max(per_second.values()) <= RATE * 1.05 + BURST, per_second
            await check_nothing_pending(client, cluster)
            view = await check_stats_agree(http, cluster, topic, verdict)
            assert view["failed"] == 0
            print(f"throttled {stats['injected_errors']}x; accepted per second: {per_second}")
        finally:
            await client.aclose()


async def test_account_paused_stops_every_sender_then_resumes(
    redis_url: str, make_stub: Callable[..., StubProcess], make_cluster: Callable[..., Cluster]
) -> None:
    """SendingPausedException for 5 s: the senders pause together (SES is not hammered, nothing
    is accepted while paused), nothing fails, and sending resumes by itself."""
    stub = make_stub(rate=SES_RATE, latency_ms=20)
    cluster = make_cluster(redis_url, stub, EMAIL_RATE=str(RATE))
    senders = start_roles(cluster, senders=2)
    topic, recipients = "paused", 1000
    emails = emails_for(topic, recipients)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id = await post_campaign(http, cluster, topic, emails)
            await until(
                lambda: sent_count(stub),
                lambda n: n >= 300,
                what="300 sends",
                within=30,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            before = time.time()
            await stub.control(pause_seconds=5)
            after = time.time()
            assert await sent_count(stub) < recipients, "the pause came after the campaign"

            verdict = await all_sent_once(client, stub, cluster, msg_id, emails)
            stats = await stub.stats()
            # What was already on its way when SES paused meets the pause once; then every
            # replica waits: far fewer refusals than the ~5 x RATE calls of a sender that
            # kept trying.
            assert 0 < stats["paused_answers"] <= RATE, stats
            paused_seconds = range(math.ceil(after), math.floor(before + 5))
            accepted = {s: stats["per_second"].get(str(s), 0) for s in paused_seconds}
            assert not any(accepted.values()), (accepted, stats["per_second"])
            assert any("SES sending paused" in s.logs() for s in senders)
            await check_nothing_pending(client, cluster)
            await check_stats_agree(http, cluster, topic, verdict)
            print(f"paused answers: {stats['paused_answers']}; per second: {stats['per_second']}")
        finally:
            await client.aclose()


async def overview(http: aiohttp.ClientSession, cluster: Cluster) -> dict[str, Any]:
    async with http.get(f"{cluster.url('stats')}/v1/stats/overview") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def test_a_misspelt_configuration_set_pauses_every_sender_and_fails_nothing(
    redis_url: str, make_stub: Callable[..., StubProcess], make_cluster: Callable[..., Cluster]
) -> None:
    """SES answers NotFoundException to every call (SES_CONFIGURATION_SET misspelt) while 1,000
    recipients are queued: the senders pause together, the dashboard shows why, nothing fails;
    once the configuration set exists, each recipient is sent exactly once."""
    stub = make_stub(rate=SES_RATE, latency_ms=20, error_rate=1.0, error_status=404)
    cluster = make_cluster(
        redis_url,
        stub,
        EMAIL_RATE=str(RATE),
        SES_CONFIGURATION_SET="tpyo",
        SETUP_PROBE_INTERVAL="1",
    )
    senders = start_roles(cluster, senders=2)
    topic, recipients = "setup", 1000
    emails = emails_for(topic, recipients)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id = await post_campaign(http, cluster, topic, emails)
            shown = await until(
                lambda: overview(http, cluster),
                lambda o: o["setup_faults"],
                what="alert",
                within=30,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            (fault,) = shown["setup_faults"]
            assert fault["scope"] == "configuration-set:tpyo", fault
            assert fault["code"] == "NotFoundException", fault
            await asyncio.sleep(3)
            stats = await stub.stats()
            # what was on its way when the first answer came, then one probe a second
            assert stats["sent"] == 0 and stats["injected_errors"] <= 2 * 64 + 3 + 4, stats
            assert not any(is_final(v) for v in (await states(client, msg_id)).values())
            assert any("SES setup fault" in s.logs() for s in senders)

            await stub.control(error_rate=0.0)  # the configuration set is created
            verdict = await all_sent_once(client, stub, cluster, msg_id, emails)
            await check_nothing_pending(client, cluster)
            view = await check_stats_agree(http, cluster, topic, verdict)
            assert view["failed"] == 0
            assert (await overview(http, cluster))["setup_faults"] == []
            print(f"refused while broken: {stats['injected_errors']}")
        finally:
            await client.aclose()
