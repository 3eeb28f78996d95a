"""One SES account shared end to end, as real processes against the SES stub enforcing the rate:
two bulk topics share it fairly, transactional mail overtakes a saturating campaign, and a
paused topic stops within what was already handed to the senders, then resumes with nothing lost
or sent twice.

The checks count recipients, not seconds: "within its fair-share time" is "while the account
sent at most twice the recipients its fair share needs", which a slow, shared machine does not
change (it slows every topic alike). The times are printed beside them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from sesflow.cli.local_ses import LOCAL_CREDENTIALS
from sesflow.common.keys import Keys
from sesflow.common.settings import settings_from_mapping
from sesflow.sender.pump import target_depth

from support.procs import Cluster
from support.sesstub import SesStub
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SENDER = "noreply@sesflow.test"
CONCURRENCY = 100  # SENDER_CONCURRENCY's default: what one sender may hold beyond `sends`


@pytest.fixture
async def stub() -> AsyncIterator[SesStub]:
    """The SES stub in this process (the test reads its receive times directly); its rate is
    set by each test before the senders start."""
    async with SesStub(keep_mail=False) as ses:
        yield ses


@pytest.fixture
def make_cluster(redis_url: str, stub: SesStub, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(rate: int) -> Cluster:
        stub.configure(rate=rate)  # enforced, and what GetAccount reports as MaxSendRate
        cluster = Cluster(
            redis_url,
            tmp_path / "logs",
            SES_ENDPOINT_URL=stub.url,
            AWS_REGION="us-east-1",
            EMAIL_SENDER=SENDER,
            EMAIL_RATE=str(rate),
            SES_TIMEOUT="5",
            **LOCAL_CREDENTIALS,
        )
        made.append(cluster)
        cluster.start_all(senders=1)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()


def emails_for(topic: str, count: int) -> list[str]:
    return [f"{topic}-{n}@example.org" for n in range(count)]


async def post(
    http: aiohttp.ClientSession, cluster: Cluster, topic: str, emails: list[str], **extra: Any
) -> str:
    body = {"topic_id": topic, "emails": emails, "subject": "S", "content": "<p>x</p>", **extra}
    async with http.post(f"{cluster.url('ingest')}/v1/messages", json={"messages": [body]}) as r:
        assert r.status == 202, await r.text()
        answer = await r.json()
    return str(answer["messages"][0]["id"])


def seen(stub: SesStub, topic: str) -> int:
    """Recipients of `topic` the stub accepted (each once or more)."""
    prefix = f"{topic}-"
    return sum(1 for address in stub.recipients if address.startswith(prefix))


def sent_between(stub: SesStub, start: float, end: float) -> int:
    """Recipients the stub first accepted in [start, end] (epoch seconds)."""
    return sum(1 for t in stub.received_at.values() if start <= t <= end)


async def wait_for(
    check: Callable[[], bool], what: str, cluster: Cluster, seconds: float = 30.0
) -> None:
    """`until` for a check on the in-process stub (no I/O of its own)."""

    async def checked() -> bool:
        return check()

    await until(checked, what=what, within=seconds, every=0.02, context=cluster.all_logs)


def assert_once(stub: SesStub, emails: list[str]) -> None:
    """Every address reached SES exactly once."""
    wrong = {a: stub.recipients[a] for a in emails if stub.recipients[a] != 1}
    assert not wrong, f"{len(wrong)} recipients not sent exactly once: {list(wrong.items())[:5]}"


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_small_topic_shares_the_rate_with_a_big_one(
    make_cluster: Callable[..., Cluster], stub: SesStub
) -> None:
    """A small topic posted a second after a big one finishes in about the time its half of the
    rate allows (at most twice that), long before the big one."""
    rate, big, small = 200, 4000, 200
    cluster = make_cluster(rate)
    async with aiohttp.ClientSession() as http:
        await post(http, cluster, "big", emails_for("big", big))
        await wait_for(lambda: seen(stub, "big") >= rate, "the big topic to send", cluster)
        posted = time.time()
        await post(http, cluster, "small", emails_for("small", small))
        await wait_for(lambda: seen(stub, "small") == small, "the small topic", cluster)
        done = max(stub.received_at[a] for a in emails_for("small", small))
        # Its fair share is half the account: `small` recipients take 2 x small of the account's
        # sends. It waits at most for what was already on `sends` or held by the sender.
        account = sent_between(stub, posted, done)
        fair_time = small / (rate / 2)
        print(
            f"small topic: {done - posted:.2f} s for {small} (fair share {fair_time:.1f} s, "
            f"ratio {(done - posted) / fair_time:.2f}); the account sent {account} meanwhile"
        )
        assert account <= 2 * (2 * small), (account, done - posted)
        assert seen(stub, "big") < big, "the small topic waited for the big one"
        assert_once(stub, emails_for("small", small))


async def test_transactional_overtakes_a_saturating_campaign(
    make_cluster: Callable[..., Cluster], stub: SesStub
) -> None:
    """While a campaign keeps the rate busy, each transactional message reaches SES after at
    most one second's worth of the rate (what was on `sends` or held by the sender)."""
    rate, bulk, messages = 200, 4000, 12
    cluster = make_cluster(rate)
    async with aiohttp.ClientSession() as http:
        await post(http, cluster, "newsletter", emails_for("newsletter", bulk))
        await wait_for(lambda: seen(stub, "newsletter") >= rate, "the campaign to send", cluster)
        posted: dict[str, float] = {}
        for n in range(messages):
            address = f"reset-{n}@example.org"
            posted[address] = time.time()
            await post(http, cluster, "password-reset", [address], lane="transactional")
            await asyncio.sleep(0.25)
        await wait_for(
            lambda: all(a in stub.received_at for a in posted), "the transactional mail", cluster
        )
        ahead = {a: sent_between(stub, at, stub.received_at[a]) - 1 for a, at in posted.items()}
        latency = {a: stub.received_at[a] - at for a, at in posted.items()}
        print(
            f"transactional: latency max {max(latency.values()) * 1000:.0f} ms, "
            f"sends ahead of it max {max(ahead.values())}, 429s {stub.throttled}"
        )
        assert max(ahead.values()) <= rate, (ahead, latency)
        assert seen(stub, "newsletter") < bulk, "the campaign ended before the test"
        assert_once(stub, list(posted))


async def test_pause_and_resume_a_topic_mid_campaign(
    make_cluster: Callable[..., Cluster], stub: SesStub, redis_url: str
) -> None:
    """A paused topic stops within what `sends` and the sender already held, another topic goes
    on meanwhile; resumed, every recipient of both is sent exactly once and stats agrees."""
    rate, count = 300, 600
    cluster = make_cluster(rate)
    settings = settings_from_mapping({"REDIS_URL": redis_url, "EMAIL_RATE": str(rate)})
    # after the pause: at most the jobs on `sends` and those the one sender holds
    bound = target_depth(settings) + CONCURRENCY
    ingest, stats = cluster.url("ingest"), cluster.url("stats")
    async with aiohttp.ClientSession() as http:
        await post(http, cluster, "paused", emails_for("paused", count))
        await post(http, cluster, "other", emails_for("other", count))
        await wait_for(lambda: seen(stub, "paused") >= 100, "the topic to send", cluster)
        async with http.post(f"{ingest}/v1/topics/paused/pause") as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        at_pause, other_at_pause = seen(stub, "paused"), seen(stub, "other")
        assert answer["paused"] is True and answer["paused_reason"] == "manual", answer

        # the other topic goes on, and gets the whole rate; by the time it sent `bound` more,
        # whatever the sender held of the paused topic is out (a held job whose slot came late
        # books a new one behind up to half a second of the rate)
        await wait_for(lambda: seen(stub, "other") >= other_at_pause + bound, "the other", cluster)
        settled = seen(stub, "paused")
        await wait_for(
            lambda: seen(stub, "other") >= other_at_pause + bound + 100, "the other", cluster
        )
        after = seen(stub, "paused")
        print(f"paused topic: {after - at_pause} sent after the pause (bound {bound})")
        assert after == settled, "the paused topic kept sending"
        assert after - at_pause <= bound, (after - at_pause, bound)
        assert after < count, "the pause came after the campaign"

        def counted(view: dict[str, Any]) -> bool:
            return bool(view.get("sent") == after)

        view = await until(
            lambda: get_json(http, f"{stats}/v1/topics/paused"),
            counted,
            what="stats to count the paused topic's sends",
            every=0.2,
        )
        assert view["total"] == count and view["sent"] == after, view
        assert view["created"] == count - after and view["failed"] == 0, view

        async with http.post(f"{ingest}/v1/topics/paused/resume") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["paused"] is False
        everyone = emails_for("paused", count) + emails_for("other", count)
        await wait_for(lambda: all(a in stub.recipients for a in everyone), "every one", cluster)
        await asyncio.sleep(0.5)  # a duplicate would show up now
        assert_once(stub, everyone)
        assert len(stub.recipients) == len(everyone)

        for topic in ("paused", "other"):
            view = await until(
                partial(get_json, http, f"{stats}/v1/topics/{topic}"),
                lambda v: v.get("sent") == count,
                what=f"stats to count every send of {topic}",
                every=0.2,
            )
            assert view["total"] == count and view["sent"] == count, view
            assert view["created"] == 0 and view["failed"] == 0 and view["stopped"] == 0, view

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        part = Keys().partition(0)
        assert await client.hgetall(part.paused) == {}
        assert await client.llen(part.backlog("paused")) == 0
    finally:
        await client.aclose()
