"""The bounce and complaint rules as real processes: mail sent through moto's SES, signed SNS
feedback posted to the tracker, read back from stats and the suppression API."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from support.backlog import settled
from support.procs import Cluster, moto_sent
from support.snssign import SnsSigner, sns_timestamp
from support.until import until

pytestmark = pytest.mark.slow

TOPIC = "rules"
SOFT, LISTED, FAN, SLOW = (f"{n}@example.com" for n in ("soft", "listed", "fan", "slow"))


def mail(ses_id: str, email: str) -> dict[str, Any]:
    return {
        "timestamp": sns_timestamp(),
        "messageId": ses_id,
        "source": "noreply@sesflow.test",
        "destination": [email],
    }


def bounce(ses_id: str, email: str, kind: str, subtype: str) -> dict[str, Any]:
    """An identity notification: one recipient bounced now."""
    return {
        "notificationType": "Bounce",
        "mail": mail(ses_id, email),
        "bounce": {
            "bounceType": kind,
            "bounceSubType": subtype,
            "timestamp": sns_timestamp(),
            "bouncedRecipients": [{"emailAddress": email, "diagnosticCode": "smtp; 5xx/4xx"}],
        },
    }


def not_spam(ses_id: str, email: str) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "mail": mail(ses_id, email),
        "complaint": {
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": "not-spam",
            "timestamp": sns_timestamp(),
        },
    }


def delay(ses_id: str, email: str) -> dict[str, Any]:
    """Configuration-set event publishing: SES keeps trying a full mailbox."""
    return {
        "eventType": "DeliveryDelay",
        "mail": mail(ses_id, email),
        "deliveryDelay": {
            "delayType": "MailboxFull",
            "timestamp": sns_timestamp(),
            "delayedRecipients": [{"emailAddress": email, "diagnosticCode": "smtp; 452 full"}],
        },
    }


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        return await resp.json()


async def suppression(http: aiohttp.ClientSession, ingest: str, email: str) -> Any:
    async with http.get(f"{ingest}/v1/suppressions/{email}") as resp:
        assert resp.status in (200, 404), await resp.text()
        return (await resp.json())["reason"] if resp.status == 200 else None


async def test_feedback_rules_end_to_end(cluster: Cluster, redis: aioredis.Redis) -> None:
    signer = SnsSigner()
    async with signer.serve():
        cluster.env.update(SNS_CERT_URL_PATTERN=signer.pattern, SNS_TOPIC_ARNS=signer.topic_arn)
        before = len(moto_sent())
        cluster.start_all(senders=1)
        ingest, tracker, stats = cluster.url("ingest"), cluster.url("tracker"), cluster.url("stats")
        # Three mails to SOFT (three bounces to come), one to each of the others.
        messages = [
            {
                "topic_id": TOPIC,
                "emails": [SOFT, LISTED, FAN, SLOW],
                "subject": "S",
                "content": "x",
            },
            {"topic_id": TOPIC, "emails": [SOFT], "subject": "S", "content": "x"},
            {"topic_id": TOPIC, "emails": [SOFT], "subject": "S", "content": "x"},
        ]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{ingest}/v1/messages", json={"messages": messages}) as resp:
                assert resp.status == 202, await resp.text()
            await until(
                lambda: get_json(http, f"{stats}/v1/topics/{TOPIC}"),
                lambda t: t.get("sent") == 6,
                what="every send recorded",
                within=20,
                context=cluster.all_logs,
            )
            ses_ids: dict[str, list[str]] = {}
            for m in moto_sent()[before:]:
                ses_ids.setdefault(m.destinations["ToAddresses"][0], []).append(m.id)
            assert sorted(len(ids) for ids in ses_ids.values()) == [1, 1, 1, 3], ses_ids

            async def post(message: dict[str, Any], times: int = 1) -> None:
                body = signer.notification(message)
                for _ in range(times):  # SNS retries reuse the MessageId
                    async with http.post(
                        f"{tracker}/v1/events/results",
                        data=json.dumps(body),
                        headers={"Content-Type": "text/plain; charset=UTF-8"},
                    ) as resp:
                        assert resp.status == 200, await resp.text()

            [listed_id], [fan_id], [slow_id] = ses_ids[LISTED], ses_ids[FAN], ses_ids[SLOW]
            await post(bounce(listed_id, LISTED, "Permanent", "OnAccountSuppressionList"))
            await post(not_spam(fan_id, FAN))
            await post(delay(slow_id, SLOW), times=2)
            first, second, third = ses_ids[SOFT]
            await post(bounce(first, SOFT, "Transient", "MailboxFull"), times=2)
            await post(bounce(second, SOFT, "Transient", "General"))

            topic = await until(
                lambda: get_json(http, f"{stats}/v1/topics/{TOPIC}"),
                lambda t: t.get("bounced_soft") == 2 and t.get("delivery_delayed") == 1,
                what="the first feedback counted",
                within=20,
                context=cluster.all_logs,
            )
            assert (topic["bounced"], topic["bounced_hard"], topic["bounced_suppressed"]) == (
                2,
                0,
                1,
            )
            assert (topic["complained"], topic["complained_not_spam"]) == (0, 1), topic
            assert topic["delivery_delayed_mailbox_full"] == 1, topic
            # Nothing of this is final: every recipient was sent once, and stays sent.
            assert (topic["sent"], topic["created"], topic["failed"]) == (6, 0, 0), topic
            assert topic["paused"] is False and topic["result_counts"]["Bounce"] == 2, topic
            for email in (SOFT, LISTED, FAN, SLOW):  # two soft bounces: not yet
                assert await suppression(http, ingest, email) is None, email

            await post(bounce(third, SOFT, "Transient", "General"))
            reason = await until(
                lambda: suppression(http, ingest, SOFT), what="the third soft bounce suppressing"
            )
            assert reason == "soft_bounce"
            overview = await until(
                lambda: get_json(http, f"{stats}/v1/stats/overview"),
                lambda o: o["totals"]["bounced_soft"] == 3,
                what="the third soft bounce counted",
                within=20,
            )
            assert overview["rates"]["hard_bounce"] == 0 and overview["rates"]["complaint"] == 0
            # The bounce rate is of the three soft bounces alone: SES's refusal is not in it.
            assert overview["rates"]["bounce"] == 0.5, overview["rates"]
            assert overview["totals"]["bounced_suppressed"] == 1
            assert overview["bulk_pause"]["paused"] is False

            # Mail again: only the soft-bounced address is dropped; SES's refusal, the not-spam
            # report and the delay kept theirs on the list of the living.
            again = {"topic_id": f"{TOPIC}-2", "emails": [SOFT, LISTED, FAN, SLOW]}
            again |= {"subject": "S", "content": "x"}
            async with http.post(f"{ingest}/v1/messages", json={"messages": [again]}) as resp:
                assert resp.status == 202, await resp.text()
            second_topic = await until(
                lambda: get_json(http, f"{stats}/v1/topics/{TOPIC}-2"),
                lambda t: t.get("sent", 0) + t.get("suppressed", 0) == 4,
                within=20,
                context=cluster.all_logs,
            )
            assert (second_topic["sent"], second_topic["suppressed"]) == (3, 1), second_topic
            await settled(redis)
            later = [m.destinations["ToAddresses"][0] for m in moto_sent()[before + 6 :]]
            assert sorted(later) == sorted([LISTED, FAN, SLOW])
