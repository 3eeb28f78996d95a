"""sesflow on a real 3-master Redis Cluster: ingest, tracker, stats and two sender replicas as
processes with REDIS_CLUSTER=1 and SEND_PARTITIONS=3, against the SES stub enforcing the rate.

One 1,000-recipient campaign (several messages, so every partition gets some) must reach SES
exactly once per recipient, never faster than EMAIL_RATE, and be counted right by stats. Along
the way: an Idempotency-Key replay, a malformed producer entry (dead-lettered through the
`requests` slot's MULTI), an open through the tracker, and a cancel that writes every partition.
"""

from __future__ import annotations

import datetime
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from sesflow.common.keys import Keys

from support.procs import Cluster
from support.redis_cluster import RedisClusterProcess
from support.stubprocess import StubProcess
from support.until import until

pytestmark = pytest.mark.slow

RATE = 100  # EMAIL_RATE and the stub's enforced rate: 1,000 recipients take about 10 s
# The stub's bucket: a quarter second of tokens. The senders' own burst is 1, but on a loaded
# 2-core machine a process may stall for 100+ ms and then fire the sends it had reserved at once.
STUB_BURST = RATE // 4
PARTITIONS = 3
RECIPIENTS = 1000
MESSAGES = 40  # of 25 recipients: the odds that crc32 leaves a partition without one are ~1e-7
SENDER = "noreply@sesflow.test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
KEYS = Keys("sesflow", PARTITIONS)


def campaign(topic: str, start: int, count: int, per_message: int, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {
                "topic_id": topic,
                "emails": [f"r{n}@example.com" for n in range(first, first + per_message)],
                "subject": "Cluster campaign",
                "content": "<html><body><p>Hello</p><a href='https://example.com/x'>x</a></body>",
                **extra,
            }
            for first in range(start, start + count, per_message)
        ]
    }


def in_an_hour() -> str:
    due = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    return due.strftime("%Y-%m-%dT%H:%M:%SZ")


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    """The JSON answer; {} while stats has not counted the topic yet (404)."""
    async with http.get(url) as resp:
        if resp.status == 404:
            return {}
        assert resp.status == 200, await resp.text()
        return await resp.json()


def test_partitions_land_on_different_masters(redis_cluster: RedisClusterProcess) -> None:
    masters = {redis_cluster.port_of_slot(key_slot(p.sends.encode())) for p in KEYS.partitions}
    assert masters == set(redis_cluster.ports)


async def test_campaign_on_a_redis_cluster(
    redis_cluster: RedisClusterProcess, tmp_path: Path
) -> None:
    redis_cluster.flushall()
    stub = StubProcess(rate=RATE, burst=STUB_BURST, keep_messages=5)
    roles = Cluster(
        redis_cluster.url,
        tmp_path / "logs",
        REDIS_CLUSTER="1",
        SEND_PARTITIONS=str(PARTITIONS),
        SES_ENDPOINT_URL=stub.start().url,
        AWS_REGION="us-east-1",
        EMAIL_SENDER=SENDER,
        EMAIL_RATE=str(RATE),
        **CREDENTIALS,
    )
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        roles.start_all(senders=2)
        await run_campaign(roles, client, stub)
    finally:
        codes = stop_once(roles)
        stub.stop()
        await client.aclose()
    assert all(code == 0 for code in codes.values()), (codes, roles.all_logs())


def stop_once(roles: Cluster) -> dict[str, int | None]:
    """SIGTERM every role once, then wait (`Cluster.stop_all` signals twice, and a second
    SIGTERM after a role's loop has ended kills it before it exits 0)."""
    for proc in roles.procs:
        proc.signal(signal.SIGTERM)
    return {
        proc.name: proc.stop() if proc.wait(15) is None else proc.wait(0) for proc in roles.procs
    }


async def run_campaign(roles: Cluster, client: Any, stub: StubProcess) -> None:
    """`client` is a RedisCluster with decoded replies (which redis-py's types cannot tell)."""
    ingest, tracker, stats = roles.url("ingest"), roles.url("tracker"), roles.url("stats")
    body = campaign("big", 0, RECIPIENTS, RECIPIENTS // MESSAGES)
    async with aiohttp.ClientSession() as http:
        # POST with an Idempotency-Key: the messages and the record in one script on `{g}`.
        headers = {"Idempotency-Key": "cluster-campaign"}
        async with http.post(f"{ingest}/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            answer = await resp.json()
        assert answer["count"] == RECIPIENTS and len(answer["messages"]) == MESSAGES
        async with http.post(f"{ingest}/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 202 and resp.headers["Idempotent-Replayed"] == "true"

        # A scheduled topic, cancelled: the stop is written in every partition.
        later = campaign("later", 5000, 30, 5, scheduled_at=in_an_hour())
        async with http.post(f"{ingest}/v1/messages", json=later) as resp:
            assert resp.status == 202, await resp.text()

        # A producer's malformed entry: dead-lettered, acknowledged, the loop goes on.
        await client.xadd(KEYS.requests, {"message": "{not json"})

        done = await until(
            lambda: get_json(http, f"{stats}/v1/topics/big"),
            lambda t: t.get("sent", 0) >= RECIPIENTS,
            within=RECIPIENTS / RATE + 25,
            context=roles.all_logs,
        )
        assert done.get("sent") == RECIPIENTS, (done, roles.all_logs())

        scheduled = await until(
            lambda: get_json(http, f"{stats}/v1/topics/later"),
            lambda t: t.get("total") == 30,
            within=20,
        )
        assert scheduled["total"] == 30, scheduled
        async with http.delete(f"{ingest}/v1/topics/later") as resp:
            assert resp.status == 200
            assert (await resp.json())["stopped"] == 30
        for p in KEYS.partitions:
            assert await client.exists(p.stop("later")), p.tag

        # An open through the tracker (record_events on the message's partition).
        # (read from a recipient's mail as the stub rendered it: a bulk call's raw request holds
        # the template, not anyone's HTML)
        mail = await stub.get("/stub/mail")
        html = next(iter(mail.values()))[-1]["html"]
        pixel = re.search(r'src="([^"]*/v1/events/open\?t=[^"]+)"', html)
        assert pixel, html[:2000]
        async with http.get(pixel.group(1).replace("&amp;", "&")) as resp:
            assert resp.status == 200
        assert tracker in pixel.group(1)

        # Every partition carried part of the campaign.
        accepted = [
            int(await client.hget(p.stats_topic("big"), "accepted") or 0) for p in KEYS.partitions
        ]
        assert all(accepted) and sum(accepted) == RECIPIENTS, accepted

        # SES got every recipient exactly once, never faster than the rate, never throttled.
        seen = await stub.get("/stub/stats?recipients=1")
        assert seen["recipients"] == {f"r{n}@example.com": 1 for n in range(RECIPIENTS)}
        del seen["recipients"]
        per_second = {int(second): n for second, n in seen["per_second"].items()}
        assert seen["throttled"] == 0, seen
        assert max(per_second.values()) <= RATE + STUB_BURST, seen
        # Two replicas share one limiter: together they average no more than EMAIL_RATE.
        assert RECIPIENTS / (max(per_second) - min(per_second) + 1) <= RATE, per_second

        topic = await until(
            lambda: get_json(http, f"{stats}/v1/topics/big"),
            lambda t: t.get("opened") == 1,
            within=20,
        )
        assert topic["total"] == RECIPIENTS and topic["sent"] == RECIPIENTS, topic
        assert topic["created"] == 0 and topic["failed"] == 0 and topic["opened"] == 1, topic
        count = await get_json(http, f"{stats}/v1/results/count/big")
        assert count == {
            "total": RECIPIENTS, "created": 0, "sent": RECIPIENTS, "failed": 0, "stopped": 0,
        }  # fmt: skip
        stopped = await until(
            lambda: get_json(http, f"{stats}/v1/results/count/later"),
            lambda c: c.get("stopped") == 30,
            within=20,
        )
        assert stopped == {"total": 30, "created": 0, "sent": 0, "failed": 0, "stopped": 30}

        dead = await until(lambda: client.xrange(KEYS.requests_dead), bool, within=5)
        assert [fields["message"] for _, fields in dead] == ["{not json"], dead

        # The reads that walk every partition (metrics scrape, dashboard overview).
        async with http.get(f"{stats}/metrics") as resp:
            assert resp.status == 200
            scrape = await resp.text()
        assert "sesflow_redis_up 1.0" in scrape, scrape[:3000]
        for p in KEYS.partitions:
            assert f'sesflow_stream_length{{partition="{p.index}",stream="sends"}}' in scrape
        overview = await get_json(http, f"{stats}/v1/stats/overview")
        assert overview["topics"], overview
        for role in (ingest, tracker):
            async with http.get(f"{role}/metrics") as resp:
                assert resp.status == 200


async def test_the_cluster_refuses_a_script_across_hash_tags(
    redis_cluster: RedisClusterProcess,
) -> None:
    """What the hash tags are for: a script (or MULTI) across two slots fails on a cluster."""
    node = aioredis.Redis(port=redis_cluster.ports[0], decode_responses=True)
    try:
        with pytest.raises(Exception, match="hash to the same slot"):
            await node.eval("return redis.call('MGET', KEYS[1], KEYS[2])", 2, "{a}x", "{b}y")
    finally:
        await node.aclose()
