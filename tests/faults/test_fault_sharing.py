"""Fault: a sender is SIGKILLed and Redis restarts while the account is shared: a bulk campaign,
transactional mail arriving all along, and a paused topic waiting in its backlog.

The promise is the crash case's, lane by lane: every recipient of the campaign and of the
transactional messages is sent exactly once (`unknown` only for what the killed replica held in
its ambiguous window). The paused topic survives both faults untouched (its pause is in Redis,
persisted with the AOF): not one of its recipients is claimed, sent or failed; once resumed,
each is sent exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError

from sesflow.cli.embedded import RedisProcess
from sesflow.common.keys import Keys

from support.faultkit import (
    UNREACHABLE,
    Expect,
    Verdict,
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
    topic_stats,
    wait_exit,
)
from support.procs import Cluster
from support.stubprocess import StubProcess
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

RATE = 300
CAMPAIGN = 1500
HELD = 300
OUTAGE_S = 2.0


class Transactional:
    """Posts a transactional message of a few recipients every tenth of a second, while on."""

    def __init__(self, http: aiohttp.ClientSession, cluster: Cluster) -> None:
        self.http = http
        self.cluster = cluster
        self.messages: dict[str, list[str]] = {}  # msg_id -> its recipients
        self.posted = 0
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.stopping = False
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        """Let the POST in flight finish and be recorded: a POST cancelled after ingest accepted
        it would send mail to addresses no check knows (a POST that was not accepted fails the
        test here)."""
        assert self.task is not None
        self.stopping = True
        await self.task

    async def run(self) -> None:
        while not self.stopping:
            emails = emails_for(f"tx{self.posted}", 3)
            self.posted += 1
            body = {"topic_id": "receipts", "emails": emails, "subject": "Your receipt",
                    "content": "<p>Thanks</p>", "lane": "transactional"}  # fmt: skip
            url = f"{self.cluster.url('ingest')}/v1/messages"
            async with self.http.post(url, json={"messages": [body]}) as resp:
                assert resp.status == 202, await resp.text()
                answer = await resp.json()
            self.messages[str(answer["messages"][0]["id"])] = emails
            await asyncio.sleep(0.1)


async def test_sender_kill_and_redis_restart_with_lanes_and_a_paused_topic(
    aof_redis: RedisProcess,
    make_stub: Callable[..., StubProcess],
    make_cluster: Callable[..., Cluster],
) -> None:
    stub = make_stub(rate=RATE * 2, latency_ms=20)
    cluster = make_cluster(aof_redis.url, stub, EMAIL_RATE=str(RATE), RECLAIM_IDLE="3")
    killed, survivor = start_roles(cluster, senders=2)
    ingest = cluster.url("ingest")
    client = aioredis.Redis.from_url(aof_redis.url, decode_responses=True)
    campaign, held = emails_for("campaign", CAMPAIGN), emails_for("held", HELD)
    async with aiohttp.ClientSession() as http:
        transactional = Transactional(http, cluster)
        try:
            async with http.post(f"{ingest}/v1/topics/held/pause") as resp:
                assert resp.status == 200, await resp.text()
            held_id = await post_campaign(http, cluster, "held", held)
            campaign_id = await post_campaign(http, cluster, "campaign", campaign)
            transactional.start()

            await until(
                lambda: sent_count(stub),
                lambda n: n >= 400,
                within=30,
                what="400 sends",
                context=cluster.all_logs,
            )
            assert killed.proc is not None
            killed.proc.kill()
            assert await wait_exit(killed, 10) == -signal.SIGKILL
            # what the dead replica held inside the ambiguous window, message by message
            ambiguous = {
                msg_id: inflight_of(await states(client, msg_id), killed.proc.pid)
                for msg_id in [campaign_id, *transactional.messages]
            }
            assert len(await states(client, campaign_id)) < CAMPAIGN, "the kill came too late"

            await until(
                lambda: sent_count(stub),
                lambda n: n >= 700,
                within=30,
                what="700 sends",
                context=cluster.all_logs,
            )
            await transactional.stop()  # no POST while Redis is down: each one is accepted
            await asyncio.to_thread(aof_redis.stop)
            await asyncio.sleep(OUTAGE_S)
            assert all(p.running for p in cluster.procs if p is not killed), cluster.all_logs()
            await asyncio.to_thread(aof_redis.start)
            # (until: Redis answers "loading" while it reads the AOF back)
            back = await until(
                lambda: states(client, campaign_id),
                bool,
                within=15,
                what="Redis",
                ignore=(*UNREACHABLE, BusyLoadingError),
                context=cluster.all_logs,
            )
            assert len(back) < CAMPAIGN, "the outage came after the campaign"
            transactional.start()
            await asyncio.sleep(1.0)
            await transactional.stop()

            to_finish = {campaign_id: len(campaign)} | {
                msg_id: len(emails) for msg_id, emails in transactional.messages.items()
            }

            async def finished() -> bool:
                for msg_id, count in to_finish.items():
                    if not await all_final(client, msg_id, count):
                        return False
                return True

            await until(
                finished,
                lambda done: done,
                within=60,
                what="every unpaused recipient",
                context=cluster.all_logs,
            )
            everyone = [*campaign, *held, *(a for e in transactional.messages.values() for a in e)]
            verdict = await check_exactly_once(
                client,
                stub,
                campaign_id,
                campaign,
                Expect(ambiguous=ambiguous[campaign_id], queued=everyone),
            )
            tx_states: dict[int, str] = {}
            for msg_id, emails in transactional.messages.items():
                tx = await check_exactly_once(
                    client,
                    stub,
                    msg_id,
                    emails,
                    Expect(ambiguous=ambiguous.get(msg_id, set()), queued=everyone),
                )
                tx_states.update({len(tx_states) + i: s for i, s in tx.states.items()})

            # the paused topic: every recipient still waiting, its pause kept through the restart
            assert await states(client, held_id) == {}, "a paused recipient was claimed"
            counts = Counter((await stub.stats(recipients=True))["recipients"])
            assert not any(counts[a] for a in held), "a paused recipient reached SES"
            assert await client.llen(Keys().partition(0).backlog("held")) == HELD
            view = await until(
                lambda: topic_stats(http, cluster, "held"),
                lambda v: v.get("total") == HELD,
                within=20,
                what="the paused topic counted",
                context=cluster.all_logs,
            )
            assert view["sent"] == 0 and view["failed"] == 0 and view["created"] == HELD, view

            async with http.post(f"{ingest}/v1/topics/held/resume") as resp:
                assert resp.status == 200, await resp.text()
            await until(
                lambda: all_final(client, held_id, HELD),
                lambda d: d,
                within=30,
                what="the resumed",
                context=cluster.all_logs,
            )
            resumed = await check_exactly_once(
                client, stub, held_id, held, Expect(ambiguous=set(), queued=everyone)
            )
            assert resumed.sent == HELD

            await check_nothing_pending(client, cluster)
            await check_stats_agree(http, cluster, "campaign", verdict)
            await check_stats_agree(http, cluster, "held", resumed)
            tx_verdict = Verdict(
                sent=sum(1 for s in tx_states.values() if s.startswith("s")),
                unknown=sum(1 for s in tx_states.values() if s == "u"),
                states=tx_states,
                stub_counts=Counter(),
            )
            await check_stats_agree(http, cluster, "receipts", tx_verdict)
            assert "reclaimed job" in survivor.logs()
            print(
                f"in flight at the kill: {sum(len(s) for s in ambiguous.values())}, unknown: "
                f"{verdict.unknown + tx_verdict.unknown}, transactional messages: "
                f"{len(transactional.messages)}"
            )
        finally:
            if transactional.task is not None and not transactional.task.done():
                transactional.task.cancel()
            await client.aclose()
