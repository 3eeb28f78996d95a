"""Fault: Redis goes away. Each case uses a redis-server of its own with AOF (everysec), stops
it with SIGTERM (Redis flushes and fsyncs the AOF on the way out) and starts it again on the same
port and data directory, as a restarted deployment would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from sesflow.cli.embedded import RedisProcess

from support.faultkit import (
    UNREACHABLE,
    Expect,
    all_final,
    all_sent_once,
    check_exactly_once,
    check_nothing_pending,
    check_stats_agree,
    emails_for,
    post_campaign,
    sent_count,
    start_roles,
    states,
    topic_stats,
)
from support.procs import Cluster
from support.snssign import SnsSigner
from support.stubprocess import StubProcess
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE = 300
OUTAGE_S = 3.0


async def outage(redis: RedisProcess, cluster: Cluster, seconds: float = OUTAGE_S) -> None:
    """Stop Redis for `seconds`; every role must still be running when it comes back."""
    await asyncio.to_thread(redis.stop)
    await asyncio.sleep(seconds)
    assert all(p.running for p in cluster.procs), cluster.all_logs()
    await asyncio.to_thread(redis.start)


@pytest.mark.parametrize("send_mode", ["bulk", "single"])
async def test_redis_restart_mid_campaign(
    aof_redis: RedisProcess,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
    send_mode: str,
) -> None:
    """The campaign completes with the crash case's guarantees; with no process dying, and an
    orderly Redis stop, not even `unknown` is allowed."""
    stub = make_stub(rate=RATE * 2, latency_ms=20)
    cluster = make_cluster(
        aof_redis.url, stub, EMAIL_RATE=str(RATE), RECLAIM_IDLE="3", SEND_MODE=send_mode
    )
    start_roles(cluster, senders=2)
    topic, recipients = "redis-restart", 1500
    emails = emails_for(topic, recipients)
    client = aioredis.Redis.from_url(aof_redis.url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            msg_id = await post_campaign(http, cluster, topic, emails)
            await until(
                lambda: sent_count(stub),
                lambda n: n >= 400,
                what="400 sends",
                within=30,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            await asyncio.to_thread(aof_redis.stop)
            during = await sent_count(stub)
            await asyncio.sleep(OUTAGE_S)
            # senders wait for Redis: at most the calls already past their claim reach SES
            assert await sent_count(stub) - during <= 2 * 64
            assert all(p.running for p in cluster.procs), cluster.all_logs()
            await asyncio.to_thread(aof_redis.start)
            assert await sent_count(stub) < recipients, "the outage came after the campaign"

            verdict = await all_sent_once(client, stub, cluster, msg_id, emails)
            bulk_calls = (await stub.stats())["bulk_calls"]
            assert bulk_calls > 0 if send_mode == "bulk" else bulk_calls == 0
            await check_nothing_pending(client, cluster)
            await check_stats_agree(http, cluster, topic, verdict)
            assert all(p.running for p in cluster.procs)
            # the senders' hot path ran on the lean lane (common/lean_redis.py), restart and all
            senders = [p for p in cluster.procs if p.role == "sender"]
            assert senders and all('"connection": "lean"' in p.logs() for p in senders)
        finally:
            await client.aclose()


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, str]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After", "")


async def test_ingest_during_redis_outage(
    aof_redis: RedisProcess,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
) -> None:
    """POST /v1/messages answers 503 with Retry-After while Redis is down (nothing half-written),
    and the client's retry after the outage is accepted, sent and counted."""
    stub = make_stub(rate=100)
    cluster = make_cluster(aof_redis.url, stub, EMAIL_RATE="50")
    start_roles(cluster, senders=1)
    ingest = f"{cluster.url('ingest')}/v1/messages"
    emails = emails_for("ingest-outage", 3)
    body = {"messages": [{"topic_id": "ingest-outage", "emails": emails, "subject": "S",
                          "content": "<p>x</p>"}]}  # fmt: skip
    client = aioredis.Redis.from_url(aof_redis.url, decode_responses=True)
    async with aiohttp.ClientSession() as http:
        try:
            await asyncio.to_thread(aof_redis.stop)
            status, answer, retry_after = await post(http, ingest, body)
            assert status == 503, answer
            assert answer["error"] == "unavailable" and retry_after.isdigit()
            await asyncio.sleep(1.0)
            assert all(p.running for p in cluster.procs), cluster.all_logs()
            await asyncio.to_thread(aof_redis.start)

            status, answer, _ = await until(
                lambda: post(http, ingest, body),
                lambda r: r[0] != 503,
                what="ingest back",
                within=15,
                ignore=UNREACHABLE,
            )
            assert status == 202, answer
            msg_id = answer["messages"][0]["id"]
            await until(
                lambda: all_final(client, msg_id, 3),
                what="delivery",
                within=20,
                ignore=UNREACHABLE,
                context=cluster.all_logs,
            )
            verdict = await check_exactly_once(
                client, stub, msg_id, emails, Expect(ambiguous=set())
            )
            await check_stats_agree(http, cluster, "ingest-outage", verdict)
            # the refused request left nothing behind: one message only
            assert (await client.xlen("{sesflow:g}:requests")) <= 1
        finally:
            await client.aclose()


def delivery_notification(ses_id: str, email: str) -> dict[str, Any]:
    """An SES Delivery identity notification (the `Message` of the SNS envelope)."""
    return {
        "notificationType": "Delivery",
        "mail": {
            "timestamp": "2026-01-01T00:00:00.000Z",
            "messageId": ses_id,
            "source": "noreply@sesflow.test",
            "destination": [email],
        },
        "delivery": {"timestamp": "2026-01-01T00:00:01.000Z", "recipients": [email]},
    }


async def test_tracker_during_redis_outage(
    aof_redis: RedisProcess,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
) -> None:
    """A signed SNS notification gets a 5xx while Redis is down (so SNS retries it); SNS's retry
    after the outage (same MessageId) is processed, a further retry is a duplicate, and stats
    counts the delivery once."""
    signer = SnsSigner()
    stub = make_stub(rate=100)
    async with signer.serve():
        cluster = make_cluster(
            aof_redis.url,
            stub,
            EMAIL_RATE="50",
            SNS_CERT_URL_PATTERN=signer.pattern,
            SNS_TOPIC_ARNS=signer.topic_arn,
        )
        start_roles(cluster, senders=1, tracker=True)
        webhook = f"{cluster.url('tracker')}/v1/events/results"
        topic = "tracker-outage"
        emails = emails_for(topic, 1)
        client = aioredis.Redis.from_url(aof_redis.url, decode_responses=True)
        async with aiohttp.ClientSession() as http:
            try:
                msg_id = await post_campaign(http, cluster, topic, emails)
                await until(
                    lambda: all_final(client, msg_id, 1),
                    what="the send",
                    within=20,
                    ignore=UNREACHABLE,
                )
                state = (await states(client, msg_id))[0]
                assert state == "s", state
                # the SES MessageId, as SES answered it (the state keeps only `s`)
                [mail] = (await stub.get("/stub/mail"))[emails[0]]
                body = signer.notification(delivery_notification(mail["message_id"], emails[0]))

                async def deliver() -> tuple[int, Any]:
                    async with http.post(
                        webhook,
                        data=json.dumps(body),
                        headers={"Content-Type": "text/plain; charset=UTF-8"},
                    ) as resp:
                        return resp.status, await resp.json(content_type=None)

                await asyncio.to_thread(aof_redis.stop)
                status, answer = await deliver()
                assert 500 <= status < 600, answer
                await asyncio.sleep(1.0)
                assert all(p.running for p in cluster.procs), cluster.all_logs()
                await asyncio.to_thread(aof_redis.start)

                status, answer = await until(
                    deliver,
                    lambda r: r[0] < 500,
                    what="the tracker back",
                    within=15,
                    ignore=UNREACHABLE,
                    context=cluster.all_logs,
                )
                assert (status, answer["status"]) == (200, "processed"), answer
                status, answer = await deliver()  # SNS may deliver it yet again
                assert (status, answer["status"]) == (200, "duplicate"), answer

                view = await until(
                    lambda: topic_stats(http, cluster, topic),
                    lambda v: v.get("delivered", 0) >= 1,
                    what="the delivery counted",
                    within=20,
                    ignore=UNREACHABLE,
                    context=cluster.all_logs,
                )
                await asyncio.sleep(1.0)  # a second count would have been applied by now
                view = await topic_stats(http, cluster, topic)
                assert view["delivered"] == 1 and view["sent"] == 1, view
            finally:
                await client.aclose()
