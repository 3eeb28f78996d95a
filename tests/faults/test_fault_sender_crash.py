"""Fault: sender replicas die mid-campaign. 2,000 recipients, three senders sharing EMAIL_RATE;
one is killed with SIGKILL, another stopped with SIGTERM, the third finishes the campaign (its
reclaim takes over what the dead ones held)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.faultkit import (
    UNREACHABLE,
    Expect,
    all_final,
    check_exactly_once,
    check_nothing_pending,
    check_stats_agree,
    emails_for,
    inflight_of,
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

RATE = 300
RECIPIENTS = 2000


async def crash_campaign(
    redis_url: str,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
    on_ambiguous: str,
    send_mode: str = "bulk",
) -> None:
    # SES allows more than EMAIL_RATE (its GetAccount would cap the senders otherwise); 50 ms
    # per call keeps several calls inside the ambiguous window when the kill comes.
    stub = make_stub(rate=RATE * 2, latency_ms=50)
    cluster = make_cluster(
        redis_url,
        stub,
        EMAIL_RATE=str(RATE),
        RECLAIM_IDLE="3",
        ON_AMBIGUOUS=on_ambiguous,
        SHUTDOWN_GRACE="5",
        SEND_MODE=send_mode,
    )
    killed, stopped, survivor = start_roles(cluster, senders=3)
    topic = f"crash-{on_ambiguous}"
    emails = emails_for(topic, RECIPIENTS)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id = await post_campaign(http, cluster, topic, emails)

            await until(
                lambda: sent_count(stub),
                lambda n: n >= 500,
                what="500 sends",
                within=30,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            assert killed.proc is not None
            killed.proc.kill()
            assert await wait_exit(killed, 10) == -signal.SIGKILL
            # What the dead sender held inside the ambiguous window (claim stored, no record):
            # the only recipients that may end `unknown`, or be sent twice with `resend`.
            at_kill = await states(client, msg_id)
            ambiguous = inflight_of(at_kill, killed.proc.pid)
            assert len(at_kill) < RECIPIENTS, "the kill came after the campaign"

            await until(
                lambda: sent_count(stub),
                lambda n: n >= 900,
                what="900 sends",
                within=30,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            assert stopped.proc is not None
            stopped.signal(signal.SIGTERM)
            assert await wait_exit(stopped, 20) == 0, stopped.logs()[-3000:]
            # a graceful stop finishes or gives back every claim it held
            assert not inflight_of(await states(client, msg_id), stopped.proc.pid)

            await until(
                lambda: all_final(client, msg_id, RECIPIENTS),
                what="every recipient to be final",
                within=60,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            verdict = await check_exactly_once(
                client,
                stub,
                msg_id,
                emails,
                Expect(ambiguous=ambiguous, resend=on_ambiguous == "resend"),
            )
            if on_ambiguous == "resend":
                assert verdict.unknown == 0
            await check_nothing_pending(client, cluster)
            await check_stats_agree(http, cluster, topic, verdict)
            # the survivor took over the dead replica's pending jobs
            assert "reclaimed job" in survivor.logs()
            # all three ran their hot path on the lean lane (common/lean_redis.py)
            for sender in (killed, stopped, survivor):
                assert '"connection": "lean"' in sender.logs()
            assert survivor.running and all(p.running for p in cluster.procs[:2])
            bulk_calls = (await stub.stats())["bulk_calls"]
            assert bulk_calls > 0 if send_mode == "bulk" else bulk_calls == 0
            report(on_ambiguous, ambiguous, verdict.unknown, verdict.stub_counts)
        finally:
            await client.aclose()


def report(mode: str, ambiguous: set[int], unknown: int, counts: Any) -> None:
    twice = sum(1 for n in counts.values() if n > 1)
    print(
        f"[{mode}] inflight at the kill: {len(ambiguous)}, unknown: {unknown}, sent twice: {twice}"
    )


@pytest.mark.parametrize("send_mode", ["bulk", "single"])
async def test_sender_crash_skip(
    redis_url: str,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
    send_mode: str,
) -> None:
    """ON_AMBIGUOUS=skip (default): no recipient reaches SES twice; `unknown` only for what the
    killed replica had in flight (in bulk mode: whole calls of up to 50 recipients)."""
    await crash_campaign(redis_url, make_stub, make_cluster, "skip", send_mode)


async def test_sender_crash_resend(
    redis_url: str, make_stub: Callable[..., StubProcess], make_cluster: Callable[..., Cluster]
) -> None:
    """ON_AMBIGUOUS=resend: everything ends sent; a second copy only for what the killed
    replica had in flight."""
    await crash_campaign(redis_url, make_stub, make_cluster, "resend")
