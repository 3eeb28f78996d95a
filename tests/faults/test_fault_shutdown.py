"""Fault: a sender is stopped (SIGTERM) while dozens of slow SES calls are in flight. It stops
reading, finishes and records those calls within SHUTDOWN_GRACE, exits 0 and leaves no job
`inflight`; a sender started afterwards sends the rest, nothing twice, nothing `unknown`."""

from __future__ import annotations

import signal
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.faultkit import (
    UNREACHABLE,
    all_sent_once,
    check_nothing_pending,
    check_stats_agree,
    emails_for,
    post_campaign,
    sent_count,
    start_roles,
    states,
    wait_exit,
)
from support.procs import Cluster
from support.stubprocess import StubProcess
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE = 100
LATENCY_MS = 400  # ~RATE x 0.4 s = 40 calls in flight at any moment


async def test_sigterm_finishes_calls_in_flight_and_exits_0(
    redis_url: str, make_stub: Callable[..., StubProcess], make_cluster: Callable[..., Cluster]
) -> None:
    stub = make_stub(rate=RATE * 10, latency_ms=LATENCY_MS)
    cluster = make_cluster(
        redis_url, stub, EMAIL_RATE=str(RATE), SHUTDOWN_GRACE="5", RECLAIM_IDLE="5"
    )
    (first,) = start_roles(cluster, senders=1)
    topic, recipients = "sigterm", 400
    emails = emails_for(topic, recipients)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id = await post_campaign(http, cluster, topic, emails)
            await until(
                lambda: sent_count(stub),
                lambda n: n >= 100,
                what="100 sends",
                within=30,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            first.signal(signal.SIGTERM)
            assert await wait_exit(first, 15) == 0, first.logs()[-3000:]
            assert "finishing in-flight jobs" in first.logs()

            found = await states(client, msg_id)
            assert not [v for v in found.values() if not v.startswith("s")], found
            assert len(found) < recipients, "the stop came after the campaign"
            accepted = (await stub.stats(recipients=True))["recipients"]
            assert set(accepted) == {emails[i] for i in found}  # every call it made is recorded

            cluster.start("sender", name="sender-after")
            verdict = await all_sent_once(client, stub, cluster, msg_id, emails)
            await check_nothing_pending(client, cluster)
            await check_stats_agree(http, cluster, topic, verdict)
            print(f"recorded before exiting: {len(found)} of {recipients}")
        finally:
            await client.aclose()
