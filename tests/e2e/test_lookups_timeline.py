"""The look-ups after a real campaign: every role as a process, the archive writer in stats,
signed SNS feedback (a delivery, a bounce) and an open through the tracker. Each recipient's
timeline, state and SES message id read back through the look-up routes, on SQLite and on
Postgres."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dashboard.test_dashboard_browser import ses_notification, tracking_links, visit

from sesflow.cli.local_ses import LOCAL_CREDENTIALS

from support.postgres import archive_url, postgres_server
from support.procs import Cluster
from support.sesstub import SesStub
from support.snssign import SnsSigner
from support.until import until

__all__ = ["archive_url", "postgres_server"]

pytestmark = pytest.mark.slow

TOPIC = "timeline"
EMAILS = ["delivered@example.com", "bounced@example.com", "opened@example.com"]
HTML = '<p>Hello: <a href="https://example.com/offer">the offer</a></p>'


async def get(http: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with http.get(url) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


async def timeline(http: aiohttp.ClientSession, stats: str, email: str) -> list[str]:
    """The address's event types, oldest first; [] while the archive has none."""
    async with http.get(f"{stats}/v1/recipients/{email}/events") as resp:
        if resp.status == 404:
            return []
        assert resp.status == 200, await resp.text()
        return [e["type"] for e in reversed((await resp.json())["items"])]


def ends_with(tail: list[str], seen: list[str]) -> bool:
    return seen[-len(tail) :] == tail


async def test_each_recipient_timeline_after_a_campaign(
    redis_url: str, archive_url: str, tmp_path: Path
) -> None:
    signer = SnsSigner()
    async with SesStub() as ses, signer.serve():
        cluster = Cluster(
            redis_url,
            tmp_path / "logs",
            SES_ENDPOINT_URL=ses.url,
            AWS_REGION="us-east-1",
            EMAIL_SENDER="news@example.com",
            EMAIL_RATE="50",
            SNS_CERT_URL_PATTERN=signer.pattern,
            SNS_TOPIC_ARNS=signer.topic_arn,
            ARCHIVE_URL=archive_url,
            **LOCAL_CREDENTIALS,
        )
        try:
            cluster.start_all(senders=1)
            async with aiohttp.ClientSession() as http:
                await run_campaign(http, cluster, ses, signer)
        finally:
            cluster.stop_all()


async def run_campaign(
    http: aiohttp.ClientSession, cluster: Cluster, ses: SesStub, signer: SnsSigner
) -> None:
    ingest, tracker, stats = (cluster.url(r) for r in ("ingest", "tracker", "stats"))
    message = {
        "topic_id": TOPIC,
        "emails": EMAILS,
        "subject": "Hello",
        "content": HTML,
        "track_clicks": True,
    }
    async with http.post(f"{ingest}/v1/messages", json={"messages": [message]}) as resp:
        assert resp.status == 202, await resp.text()
        msg_id = (await resp.json())["messages"][0]["id"]

    # Every send archived: the look-ups give each recipient's SES message id.
    recipients_url = f"{stats}/v1/messages/{msg_id}/recipients"

    async def archived() -> dict[str, Any]:
        async with http.get(recipients_url) as resp:
            return await resp.json() if resp.status == 200 else {"items": []}

    sent = await until(
        archived,
        lambda page: [r["state"] for r in page["items"]] == ["sent"] * 3,
        what="every recipient archived as sent",
        within=30,
    )
    ses_ids = {r["email"]: r["ses_id"] for r in sent["items"]}
    assert all(ses_ids.values()), ses_ids

    # Feedback: a signed delivery for the first, a signed hard bounce for the second, and the
    # third opens the mail (its own pixel).
    for kind, email in (("Delivery", EMAILS[0]), ("Bounce", EMAILS[1])):
        body = signer.notification(ses_notification(kind, ses_ids[email], email))
        async with http.post(f"{tracker}/v1/events/results", data=json.dumps(body)) as resp:
            assert resp.status == 200, await resp.text()
    await visit(http, tracking_links(ses)[EMAILS[2]][0])

    expected = {
        EMAILS[0]: ["sent", "delivered"],
        EMAILS[1]: ["sent", "bounced"],
        EMAILS[2]: ["sent", "opened"],
    }
    for email, kinds in expected.items():
        got = await until(
            partial(timeline, http, stats, email),
            partial(ends_with, kinds),
            what=f"{email}'s timeline",
            within=30,
        )
        assert got[-2:] == kinds, (email, got)

    # The details each event carries, and the states by the message.
    events = (await get(http, f"{stats}/v1/recipients/{EMAILS[1]}/events"))["items"]
    bounce = events[0]
    assert bounce["type"] == "bounced" and bounce["message_id"] == msg_id
    assert (bounce["bounce_type"], bounce["bounce_subtype"]) == ("Permanent", "General")
    assert bounce["topic_id"] == TOPIC and bounce["index"] == 1
    sent_event = next(e for e in events if e["type"] == "sent")
    assert sent_event["ses_id"] == ses_ids[EMAILS[1]]

    page = await get(http, recipients_url)
    states = {r["email"]: (r["state"], r["last_event"]) for r in page["items"]}
    assert states == {
        EMAILS[0]: ("delivered", "delivered"),
        EMAILS[1]: ("bounced", "bounced"),
        EMAILS[2]: ("opened", "opened"),
    }
    msg = await get(http, f"{stats}/v1/messages/{msg_id}")
    assert msg["counts"] == {"delivered": 1, "bounced": 1, "opened": 1}
    assert (msg["topic_id"], msg["subject"], msg["total"]) == (TOPIC, "Hello", 3)
    bounced = await get(http, f"{recipients_url}?state=bounced")
    assert [r["email"] for r in bounced["items"]] == [EMAILS[1]]
    topics = await get(http, f"{stats}/v1/topics")
    assert [t["topic_id"] for t in topics["items"]] == [TOPIC]
    listed = await get(http, f"{stats}/v1/topics/{TOPIC}/messages")
    assert [m["id"] for m in listed["items"]] == [msg_id]
