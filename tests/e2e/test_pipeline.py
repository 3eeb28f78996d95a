"""The whole pipeline as real processes: ingest, sender, tracker and stats against a real
redis-server and moto's SES, driven only through the public HTTP APIs."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.backlog import settled
from support.procs import Cluster, moto_sent
from support.snssign import SnsSigner
from support.until import until

pytestmark = pytest.mark.slow

RUST_SHAPE = {
    "messages": [
        {
            "topic_id": "rust-topic",
            "emails": ["a1@example.com", "a2@example.com", "a3@example.com"],
            "subject": "Rust shape",
            "content": "<html><body><p>Hello from the Rust service's shape</p></body></html>",
        }
    ]
}
GO_SHAPE = {
    "messages": [
        {
            "topicId": "go-topic",
            "emails": ["b1@example.com", "b2@example.com", "b3@example.com"],
            "subject": "Go shape",
            "content": "<p>Hello from the Go service's shape</p>",
        }
    ]
}


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        return await resp.json()


async def test_both_older_service_shapes_end_to_end(
    cluster: Cluster, redis: aioredis.Redis
) -> None:
    before = len(moto_sent())
    cluster.start_all(senders=1)
    ingest, tracker, stats = cluster.url("ingest"), cluster.url("tracker"), cluster.url("stats")
    async with aiohttp.ClientSession() as http:
        for body in (RUST_SHAPE, GO_SHAPE):
            async with http.post(f"{ingest}/v1/messages", json=body) as resp:
                assert resp.status == 202, await resp.text()
                assert (await resp.json())["count"] == 3

        # SES received each recipient exactly once.
        async def sent() -> list[Any]:
            return moto_sent()[before:]

        await until(sent, lambda m: len(m) >= 6, within=20)
        # Once every group has acknowledged what it read, no send is still on its way: a
        # duplicate would be there now.
        await settled(redis)
        messages = moto_sent()[before:]
        recipients = Counter(addr for m in messages for addr in m.destinations["ToAddresses"])
        assert recipients == Counter({f"{p}{n}@example.com": 1 for p in "ab" for n in (1, 2, 3)}), (
            cluster.all_logs()
        )

        # The open pixel in the sent HTML counts an open.
        rust_mail = next(m for m in messages if m.destinations["ToAddresses"] == ["a1@example.com"])
        pixel = re.search(r'src="([^"]*/v1/events/open\?t=[^"]+)"', rust_mail.body)
        assert pixel, rust_mail.body
        # Tracking links point at the tracker (SERVER_URL), which counts the open.
        assert pixel.group(1).startswith(f"{tracker}/v1/events/open?"), pixel.group(1)
        async with http.get(pixel.group(1).replace("&amp;", "&")) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/gif"

        topic = await until(
            lambda: get_json(http, f"{stats}/v1/topics/rust-topic"),
            lambda t: t.get("sent") == 3 and t.get("opened") == 1,
            within=20,
        )
        assert topic["total"] == 3 and topic["sent"] == 3 and topic["opened"] == 1, topic
        assert topic["created"] == 0 and topic["failed"] == 0

        go = await until(
            lambda: get_json(http, f"{stats}/v1/results/count/go-topic"),
            lambda c: c.get("sent") == 3,
            within=20,
        )
        assert go == {"total": 3, "created": 0, "sent": 3, "failed": 0, "stopped": 0}
        # The older services served everything on one port: their clients keep one base URL.
        assert await get_json(http, f"{ingest}/v1/results/count/go-topic") == go

        hourly = await get_json(http, f"{stats}/v1/results/sent?hours=1")
        assert hourly == {"count": 6}
        counts = await get_json(http, f"{stats}/v1/events/counts/sent")
        assert counts["count"] == 6


def ses_notification(kind: str, ses_id: str, email: str) -> dict[str, Any]:
    """An SES identity notification (what SNS carries in `Message`) for one recipient."""
    mail = {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "messageId": ses_id,
        "source": "noreply@sesflow.test",
        "destination": [email],
    }
    if kind == "Delivery":
        return {
            "notificationType": "Delivery",
            "mail": mail,
            "delivery": {"timestamp": "2026-01-01T00:00:01.000Z", "recipients": [email]},
        }
    return {
        "notificationType": "Bounce",
        "mail": mail,
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "timestamp": "2026-01-01T00:00:01.000Z",
            "bouncedRecipients": [
                {"emailAddress": email, "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
            ],
        },
    }


async def test_feedback_end_to_end(cluster: Cluster, redis: aioredis.Redis) -> None:
    """Signed SNS Delivery and Bounce notifications count once each (a retried delivery too);
    the hard bounce suppresses the address, so a later message skips it."""
    signer = SnsSigner()
    async with signer.serve():
        cluster.env.update(SNS_CERT_URL_PATTERN=signer.pattern, SNS_TOPIC_ARNS=signer.topic_arn)
        before = len(moto_sent())
        cluster.start_all(senders=1)
        ingest, tracker, stats = cluster.url("ingest"), cluster.url("tracker"), cluster.url("stats")
        emails = ["c1@example.com", "c2@example.com", "c3@example.com"]
        message = {"topic_id": "feedback", "emails": emails, "subject": "S", "content": "<p>x</p>"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{ingest}/v1/messages", json={"messages": [message]}) as resp:
                assert resp.status == 202

            async def sent() -> list[Any]:
                return moto_sent()[before:]

            messages = await until(sent, lambda m: len(m) >= 3, within=20)
            # SES has them; feedback can be placed once the sender has recorded each SES id
            # (its record, counted as sent, writes the link): SES's own feedback comes later.
            await until(
                lambda: get_json(http, f"{stats}/v1/topics/feedback"),
                lambda t: t.get("sent") == 3,
                what="every send recorded",
                within=20,
            )
            ses_ids = {m.destinations["ToAddresses"][0]: m.id for m in messages}
            delivery = signer.notification(
                ses_notification("Delivery", ses_ids["c1@example.com"], "c1@example.com")
            )
            bounce = signer.notification(
                ses_notification("Bounce", ses_ids["c2@example.com"], "c2@example.com"),
                version=1,
            )
            for body in (delivery, bounce, bounce):  # SNS retries reuse the MessageId
                async with http.post(
                    f"{tracker}/v1/events/results",
                    data=json.dumps(body),
                    headers={"Content-Type": "text/plain; charset=UTF-8"},
                ) as resp:
                    assert resp.status == 200, await resp.text()

            topic = await until(
                lambda: get_json(http, f"{stats}/v1/topics/feedback"),
                lambda t: t.get("delivered") == 1 and t.get("bounced") == 1,
                within=20,
            )
            assert topic["sent"] == 3 and topic["delivered"] == 1, topic
            assert topic["bounced"] == 1 and topic["bounced_hard"] == 1, topic

            async with http.get(f"{ingest}/v1/suppressions/c2@example.com") as resp:
                assert resp.status == 200
                assert (await resp.json())["reason"] == "bounce"

            again = {**message, "topic_id": "feedback-2"}
            async with http.post(f"{ingest}/v1/messages", json={"messages": [again]}) as resp:
                assert resp.status == 202
            second = await until(
                lambda: get_json(http, f"{stats}/v1/topics/feedback-2"),
                lambda t: t.get("sent", 0) + t.get("suppressed", 0) == 3,
                within=20,
            )
            assert second["sent"] == 2 and second["suppressed"] == 1, second
            await settled(redis)
            assert all(
                m.destinations["ToAddresses"] != ["c2@example.com"]
                for m in moto_sent()[before + 3 :]
            )
