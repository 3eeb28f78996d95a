"""The reputation guard as real processes: signed SNS hard bounces reach the tracker, stats counts
them and pauses the topic, and the senders' pump leaves the rest of its recipients waiting."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from sesflow.common.keys import Keys

from support.procs import Cluster, moto_sent
from support.snssign import SnsSigner
from support.until import until

pytestmark = pytest.mark.slow

TOPIC = "stale-list"
RECIPIENTS = 400  # at EMAIL_RATE 50: about 8 s of mail, most of it still waiting at the trip
BOUNCES = 30  # of at most ~250 sent by the time they are counted: well over 5%


def hard_bounce(ses_id: str, email: str) -> dict[str, Any]:
    """An SES identity notification of a permanent bounce (what SNS carries in `Message`)."""
    return {
        "notificationType": "Bounce",
        "mail": {
            "timestamp": "2026-01-01T00:00:00.000Z",
            "messageId": ses_id,
            "source": "noreply@sesflow.test",
            "destination": [email],
        },
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "timestamp": "2026-01-01T00:00:01.000Z",
            "bouncedRecipients": [
                {"emailAddress": email, "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
            ],
        },
    }


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        return await resp.json()


def sent_to_topic(before: int) -> list[Any]:
    return [
        m for m in moto_sent()[before:] if m.destinations["ToAddresses"][0].startswith(f"{TOPIC}-")
    ]


async def settled(count: Callable[[], int], quiet: float = 1.0, within: float = 10.0) -> int:
    """`count()` once it has not changed for `quiet` seconds; raises after `within`."""
    deadline = time.monotonic() + within
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"still changing after {within} s: {last}"
        await asyncio.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


async def test_signed_hard_bounces_pause_the_topic_within_two_seconds(
    cluster: Cluster, redis: Any
) -> None:
    signer = SnsSigner()
    async with signer.serve():
        cluster.env.update(
            SNS_CERT_URL_PATTERN=signer.pattern,
            SNS_TOPIC_ARNS=signer.topic_arn,
            GUARD_ACCOUNT_BOUNCE_RATE="0.5",  # this topic alone, not the whole account
        )
        before = len(moto_sent())
        cluster.start_all(senders=1)
        ingest, tracker, stats = cluster.url("ingest"), cluster.url("tracker"), cluster.url("stats")
        emails = [f"{TOPIC}-{n}@example.com" for n in range(RECIPIENTS)]
        message = {"topic_id": TOPIC, "emails": emails, "subject": "S", "content": "<p>x</p>"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{ingest}/v1/messages", json={"messages": [message]}) as resp:
                assert resp.status == 202, await resp.text()

            topic = await until(
                lambda: get_json(http, f"{stats}/v1/topics/{TOPIC}"),
                lambda t: t.get("sent", 0) >= 100,
                what="100 recipients sent",
                within=30,
                context=cluster.all_logs,
            )
            assert topic.get("sent", 0) >= 100 and not topic["paused"], cluster.all_logs()
            messages = sent_to_topic(before)[:BOUNCES]
            bodies = [
                signer.notification(hard_bounce(m.id, m.destinations["ToAddresses"][0]))
                for m in messages
            ]

            async def post(body: dict[str, Any]) -> None:
                async with http.post(
                    f"{tracker}/v1/events/results",
                    data=json.dumps(body),
                    headers={"Content-Type": "text/plain; charset=UTF-8"},
                ) as resp:
                    assert resp.status == 200, await resp.text()

            await asyncio.gather(*(post(body) for body in bodies))
            posted = time.monotonic()
            topic = await until(
                lambda: get_json(http, f"{stats}/v1/topics/{TOPIC}"),
                lambda t: t.get("paused") is True,
                what="the topic paused by the guard",
                within=2.0,
                context=cluster.all_logs,
            )
            took = time.monotonic() - posted
            assert topic["paused"] is True, (took, topic, cluster.all_logs())
            assert took <= 2.0, took
            assert topic["paused_reason"] == "bounce_rate", topic
            figures = topic["paused_figures"]
            assert figures["bounced_hard"] == BOUNCES and figures["sent"] >= 100, figures
            assert figures["rate"] >= 0.05 and topic["paused_at"] > 0

            # The pump moves nothing more: the backlog keeps the rest of the recipients. The jobs
            # already handed to the sender when the pause landed still go out, then SES receives
            # nothing more for the topic: every recipient is sent once or still waiting.
            backlog = Keys().partition(0).backlog(TOPIC)
            waiting = await redis.llen(backlog)
            delivered = await settled(lambda: len(sent_to_topic(before)))
            assert await redis.llen(backlog) == waiting > 0
            assert waiting + delivered == RECIPIENTS, (waiting, delivered)

            overview = await get_json(http, f"{stats}/v1/stats/overview")
            assert overview["bulk_pause"]["paused"] is False
            assert [t["topic_id"] for t in overview["paused_topics"]] == [TOPIC]
