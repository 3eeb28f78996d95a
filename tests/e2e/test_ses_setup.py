"""Per-message SES setup end to end, as real processes against the SES stub: ingest refuses a
configuration set or tenant outside the allow-lists; SES pausing one configuration set leaves
the messages of another set at the full rate (counted over a window, not timed), and once SES
resumes it, the paused set's mail goes out, none lost, none twice.

The rate of the other set is checked loosely, once every job of the paused set is parked: over a
window, SES accepts at least a quarter of what EMAIL_RATE allows in it (a shared, loaded machine
slows every process alike; the figure is printed). Without parking, the paused set's jobs would
hold every sender slot and the pump's whole depth, and the other set would get nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from sesflow.cli.local_ses import LOCAL_CREDENTIALS
from sesflow.common.keys import Keys

from support.procs import Cluster
from support.sesstub import SesStub
from support.until import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SENDER = "noreply@sesflow.test"
RATE = 100
WINDOW_S = 3.0
SENDERS = 2


@pytest.fixture
async def stub() -> AsyncIterator[SesStub]:
    async with SesStub(keep_mail=False, rate=RATE) as ses:
        yield ses


@pytest.fixture
def cluster(redis_url: str, stub: SesStub, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(
        redis_url,
        tmp_path / "logs",
        SES_ENDPOINT_URL=stub.url,
        AWS_REGION="us-east-1",
        EMAIL_SENDER=SENDER,
        EMAIL_RATE=str(RATE),
        SES_TIMEOUT="5",
        SENDER_CONCURRENCY="16",
        SETUP_PROBE_INTERVAL="1",
        SES_CONFIGURATION_SETS="held,open",
        SES_TENANTS="acme",
        SES_TENANT_IDENTITIES="acme:acme.example",
        **LOCAL_CREDENTIALS,
    )
    made.start_all(senders=SENDERS)
    yield made
    made.stop_all()


def emails_for(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n}@example.org" for n in range(count)]


def seen(stub: SesStub, prefix: str) -> int:
    return sum(1 for address in stub.recipients if address.startswith(f"{prefix}-"))


async def post(http: aiohttp.ClientSession, cluster: Cluster, **message: Any) -> tuple[int, Any]:
    body = {"subject": "S", "content": "<p>x</p>", **message}
    async with http.post(f"{cluster.url('ingest')}/v1/messages", json={"messages": [body]}) as r:
        return r.status, await r.json()


async def wait_for(check: Any, what: str, cluster: Cluster, seconds: float = 40.0) -> None:
    async def checked() -> bool:
        return bool(check())

    await until(checked, what=what, within=seconds, every=0.05, context=cluster.all_logs)


async def test_a_paused_configuration_set_leaves_the_others_at_full_rate(
    cluster: Cluster, stub: SesStub, redis_url: str
) -> None:
    stub.configure(paused_configuration_sets=["held"])
    held, other = emails_for("held", 400), emails_for("open", 1500)
    async with aiohttp.ClientSession() as http:
        status, answer = await post(
            http, cluster, topic_id="held", emails=held, configuration_set="held"
        )
        assert status == 202, answer
        status, answer = await post(
            http, cluster, topic_id="open", emails=other, configuration_set="open"
        )
        assert status == 202, answer

        # the allow-lists, through the real API
        refused = [
            ({"configuration_set": "nope"}, "invalid_configuration_set"),
            ({"tenant": "globex"}, "invalid_tenant"),
            ({"tenant": "acme", "from_email": "x@other.example"}, "tenant_identity"),
        ]
        for fields, error in refused:
            status, answer = await post(http, cluster, topic_id="x", emails=["a@x.io"], **fields)
            assert (status, answer["error"]) == (400, error), answer

        # every job of the held set parked, but the one each sender keeps to probe with
        parked = Keys().partition(0).parked("configuration-set:held")
        client = aioredis.Redis.from_url(redis_url)
        try:
            await until(
                lambda: client.llen(parked),
                lambda n: n >= len(held) - SENDERS,
                what="the held set parked",
                within=40,
                context=cluster.all_logs,
            )
        finally:
            await client.aclose()
        start, before = time.time(), seen(stub, "open")
        await wait_for(lambda: time.time() >= start + WINDOW_S, "the window", cluster)
        during = seen(stub, "open") - before
        print(
            f"open set: {during} in {WINDOW_S} s at EMAIL_RATE={RATE}; held: {seen(stub, 'held')}"
        )
        assert during >= RATE * WINDOW_S / 4, during
        assert seen(stub, "held") == 0
        assert seen(stub, "open") < len(other), "the window reached the end of the open set"
        assert stub.setup_paused > 0

        await wait_for(lambda: seen(stub, "open") == len(other), "the open set to finish", cluster)
        stub.configure(paused_configuration_sets=[])  # SES resumes the set
        await wait_for(
            lambda: seen(stub, "held") == len(held), "the held set after resume", cluster
        )
    wrong = {a: stub.recipients[a] for a in held + other if stub.recipients[a] != 1}
    assert not wrong, f"not sent exactly once: {list(wrong.items())[:5]}"
