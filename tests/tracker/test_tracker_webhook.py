"""The SNS webhook end to end in-process: signatures, topics, freshness, certificate URLs,
dedupe, subscriptions, status codes, suppression, Redis outages."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from sesflow.cli.embedded import free_port
from sesflow.common.keys import Keys
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList

from support.promtext import metric
from support.snssign import SnsSigner, make_key_and_cert, sign, sns_timestamp
from support.trackerkit import load_payload, post_sns, stream_events

KEYS = Keys()
P0 = KEYS.partition(0)
MSG = "1732461234567-0"


def delivery(rid: str = f"{MSG}_15") -> dict[str, Any]:
    payload = load_payload("event_delivery.json")
    payload["mail"]["tags"]["sesflow-rid"] = [rid]
    return payload


@pytest.mark.parametrize("version", [1, 2])
async def test_correctly_signed_message_is_accepted(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any, version: int
) -> None:
    await redis.hset(P0.message(MSG), mapping={"topic": "news", "subject": "s", "html": "h"})
    resp = await post_sns(tracker, signer.notification(delivery(), version=version))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "processed"
    [event] = await stream_events(redis, P0.events)
    assert (event.type, event.msg_id, event.index, event.topic) == ("delivered", MSG, 15, "news")
    assert event.email == "recipient@example.com"


async def test_subject_is_part_of_the_signature(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    body = signer.notification(delivery(), subject="Amazon SES Email Event Notification")
    assert (await post_sns(tracker, body)).status == 200
    body = signer.notification(delivery(), subject="original")
    body["Subject"] = "changed"
    assert (await post_sns(tracker, body)).status == 403


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Message", json.dumps({"eventType": "Delivery", "mail": {"messageId": "forged"}})),
        ("MessageId", "another-id"),
        ("Timestamp", sns_timestamp(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))),
        ("Type", "SubscriptionConfirmation"),
        ("Signature", "AAAA"),
        ("SignatureVersion", "1"),  # signed as v2
    ],
    # Named by field: a test id holding the current time would differ between collections.
    ids=["Message", "MessageId", "Timestamp", "Type", "Signature", "SignatureVersion"],
)
async def test_changed_field_is_refused(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any, field: str, value: str
) -> None:
    body = signer.notification(delivery(), version=2)
    body[field] = value
    resp = await post_sns(tracker, body)
    assert resp.status == 403, await resp.text()
    assert (await resp.json())["error"] == "forbidden"
    assert await redis.xlen(P0.events) == 0


async def test_foreign_topic_is_refused_before_any_fetch(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    body = signer.notification(delivery(), topic_arn="arn:aws:sns:us-east-1:999999999999:other")
    resp = await post_sns(tracker, body)
    assert resp.status == 403
    assert "topic" in (await resp.json())["detail"]
    assert signer.cert_fetches == 0
    assert await redis.xlen(P0.events) == 0


async def test_every_message_is_refused_while_no_topic_is_configured(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    signer: SnsSigner,
    redis: Any,
) -> None:
    settings = make_settings(SNS_CERT_URL_PATTERN=signer.pattern)
    refused = "sesflow_tracker_sns_verification_failures_total"
    with capture_logs() as logs:
        async with start_tracker(settings) as client:
            before = await metric(client, refused, reason="no_topics")
            for _ in range(3):
                resp = await post_sns(client, signer.notification(delivery()))
                assert resp.status == 403
                assert "SNS_TOPIC_ARNS is not set" in (await resp.json())["detail"]
            confirmation = await post_sns(client, signer.subscription())
            assert confirmation.status == 403
            after = await metric(client, refused, reason="no_topics")
    assert signer.confirmations == [] and signer.cert_fetches == 0
    assert await redis.xlen(P0.events) == 0
    assert after - before == 4
    # Said at start, then at most once a minute however many messages come.
    said = [e for e in logs if "SNS_TOPIC_ARNS is not set" in e["event"]]
    assert len(said) == 2 and all(e["log_level"] == "warning" for e in said)


async def test_star_accepts_any_topic_and_warns_at_start(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    signer: SnsSigner,
) -> None:
    settings = make_settings(SNS_CERT_URL_PATTERN=signer.pattern, SNS_TOPIC_ARNS="*")
    with capture_logs() as logs:
        async with start_tracker(settings) as client:
            body = signer.notification(delivery(), topic_arn="arn:aws:sns:eu-west-1:1:anything")
            assert (await post_sns(client, body)).status == 200
    assert any("SNS_TOPIC_ARNS=*" in e["event"] and e["log_level"] == "warning" for e in logs)


async def test_signature_version_1_is_refused_when_only_2_is_accepted(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    signer: SnsSigner,
) -> None:
    settings = make_settings(
        SNS_CERT_URL_PATTERN=signer.pattern,
        SNS_TOPIC_ARNS=signer.topic_arn,
        SNS_SIGNATURE_VERSIONS="2",
    )
    async with start_tracker(settings) as client:
        resp = await post_sns(client, signer.notification(delivery(), version=1))
        assert resp.status == 403
        assert "SNS_SIGNATURE_VERSIONS=2" in (await resp.json())["detail"]
        assert (await post_sns(client, signer.subscription(version=1))).status == 403
        assert (await post_sns(client, signer.notification(delivery(), version=2))).status == 200
    assert signer.confirmations == []


async def test_certificate_issued_to_another_name_is_refused(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    signing_identity: tuple[rsa.RSAPrivateKey, bytes],
    redis: Any,
) -> None:
    """A key of our own, served on an accepted URL, but its certificate names someone else."""
    impostor = SnsSigner(identity=make_key_and_cert("sns.example.com", key=signing_identity[0]))
    async with impostor.serve():
        settings = make_settings(
            SNS_CERT_URL_PATTERN=impostor.pattern, SNS_TOPIC_ARNS=impostor.topic_arn
        )
        async with start_tracker(settings) as client:
            resp = await post_sns(client, impostor.notification(delivery()))
            assert resp.status == 403
            assert "not issued to sns.amazonaws.com" in (await resp.json())["detail"]
            assert (await post_sns(client, impostor.subscription())).status == 403
    assert impostor.confirmations == []
    assert await redis.xlen(P0.events) == 0


async def test_stale_timestamp_is_refused(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    old = sns_timestamp(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1, minutes=1))
    resp = await post_sns(tracker, signer.notification(delivery(), timestamp=old))
    assert resp.status == 403
    assert "old" in (await resp.json())["detail"]
    fresh = sns_timestamp(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=59))
    assert (await post_sns(tracker, signer.notification(delivery(), timestamp=fresh))).status == 200


async def test_timestamp_from_the_future_is_refused(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    """Only SNS stamps its messages; one dated ahead would outlive its dedupe mark."""
    ahead = sns_timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))
    resp = await post_sns(tracker, signer.notification(delivery(), timestamp=ahead))
    assert resp.status == 403
    assert "future" in (await resp.json())["detail"]
    assert await redis.xlen(P0.events) == 0
    skewed = sns_timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))  # clock skew
    resp = await post_sns(tracker, signer.notification(delivery(), timestamp=skewed))
    assert resp.status == 200


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://example.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/cert.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.txt",
    ],
)
async def test_certificate_on_a_non_sns_host_is_refused_with_the_default_pattern(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    signer: SnsSigner,
    cert_url: str,
) -> None:
    async with start_tracker(make_settings(SNS_TOPIC_ARNS=signer.topic_arn)) as client:
        # Our own loopback certificate is refused too: the default pattern is AWS's.
        for url in (cert_url, signer.cert_url):
            resp = await post_sns(client, signer.notification(delivery(), cert_url=url))
            assert resp.status == 403
            assert "certificate URL" in (await resp.json())["detail"]
    assert signer.cert_fetches == 0


async def test_unsigned_message_is_refused(
    tracker: TestClient[Any, Any], signer: SnsSigner
) -> None:
    body = signer.notification(delivery())
    del body["Signature"]
    assert (await post_sns(tracker, body)).status == 403


async def test_retried_message_id_counts_once(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    body = signer.notification(delivery())
    first = await post_sns(tracker, body)
    again = await post_sns(tracker, body)
    assert (first.status, again.status) == (200, 200)
    assert (await first.json())["status"] == "processed"
    assert (await again.json())["status"] == "duplicate"
    # SNS may also deliver the same message twice at once.
    concurrent = signer.notification(delivery(f"{MSG}_16"))
    answers = await asyncio.gather(*(post_sns(tracker, concurrent) for _ in range(5)))
    statuses = sorted([(await r.json())["status"] for r in answers])
    assert statuses == ["duplicate"] * 4 + ["processed"]
    events = await stream_events(redis, P0.events)
    assert sorted(e.index for e in events) == [15, 16]
    assert signer.cert_fetches == 1


async def test_subscription_is_confirmed_only_when_valid(
    tracker: TestClient[Any, Any], signer: SnsSigner
) -> None:
    forged = signer.subscription()
    forged["Token"] = "changed"
    assert (await post_sns(tracker, forged)).status == 403
    foreign = signer.subscription(topic_arn="arn:aws:sns:us-east-1:999999999999:other")
    assert (await post_sns(tracker, foreign)).status == 403
    elsewhere = signer.subscription(subscribe_url="http://localhost:1/confirm?Token=x")
    assert (await post_sns(tracker, elsewhere)).status == 403
    assert signer.confirmations == []

    for version in (1, 2):
        resp = await post_sns(tracker, signer.subscription(version=version))
        assert resp.status == 200
        assert (await resp.json())["status"] == "confirmed"
    assert len(signer.confirmations) == 2
    assert "Action=ConfirmSubscription" in signer.confirmations[0]


async def test_unsubscribe_confirmation_is_logged(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    resp = await post_sns(tracker, signer.subscription("UnsubscribeConfirmation"))
    assert resp.status == 200
    assert (await resp.json())["status"] == "logged"
    assert signer.confirmations == []
    assert await redis.xlen(P0.events) == 0


async def test_topic_validation_message_is_accepted_and_ignored(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    text = "Successfully validated SNS topic for Amazon SES event destination 'sesflow'."
    resp = await post_sns(tracker, signer.notification(text))
    assert resp.status == 200
    assert (await resp.json())["status"] == "ignored"
    assert await redis.xlen(P0.events) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"Type": "Strange"}',
        b'{"Type": "Notification", "Message": 5}',
    ],
)
async def test_malformed_body_is_400(tracker: TestClient[Any, Any], body: bytes) -> None:
    resp = await post_sns(tracker, body)
    assert resp.status == 400
    data = await resp.json()
    assert data["error"] == "malformed" and data["detail"]


async def test_signed_message_that_is_not_an_ses_event_is_400(
    tracker: TestClient[Any, Any], signer: SnsSigner
) -> None:
    for message in ("plain text", "[1, 2]", json.dumps({"mail": {"destination": 5}})):
        resp = await post_sns(tracker, signer.notification(message))
        assert resp.status == 400, message


async def test_go_service_shape_needs_a_signature_too(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    body = load_payload("go_service_body.json")
    assert (await post_sns(tracker, body)).status == 403  # the Go service's unsigned body
    ses_id = body["Message"]["mail"]["messageId"]
    await redis.set(KEYS.ses_message(ses_id), f"{MSG}_30")
    body.update(
        MessageId="go-1",
        TopicArn=signer.topic_arn,
        Timestamp=sns_timestamp(),
        SigningCertURL=signer.cert_url,
    )
    resp = await post_sns(tracker, sign(body, signer.key, 1))
    assert resp.status == 200, await resp.text()
    [event] = await stream_events(redis, P0.events)
    assert (event.type, event.msg_id, event.index, event.ses_id) == ("delivered", MSG, 30, ses_id)


async def test_hard_bounce_and_complaint_suppress_soft_bounce_does_not(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    for name in ("event_bounce.json", "identity_bounce_transient.json", "identity_complaint.json"):
        assert (await post_sns(tracker, signer.notification(load_payload(name)))).status == 200
    suppressions = SuppressionList(redis, KEYS)
    hard = await suppressions.get("recipient@example.com")
    assert hard is not None and hard.reason == "bounce" and "Suppressed" in hard.detail
    complaint = await suppressions.get("annoyed@example.com")
    assert complaint is not None and complaint.reason == "complaint"
    assert await suppressions.get("full@example.com") is None


async def test_redis_down_answers_503_so_sns_retries(
    make_settings: Callable[..., Settings],
    start_tracker: Callable[[Settings], Any],
    signer: SnsSigner,
) -> None:
    settings = make_settings(
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        SNS_CERT_URL_PATTERN=signer.pattern,
        SNS_TOPIC_ARNS=signer.topic_arn,
    )
    async with start_tracker(settings) as client:
        resp = await post_sns(client, signer.notification(delivery()))
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        # Refusals that need no Redis are still refusals, not 5xx.
        foreign = signer.notification(delivery(), topic_arn="arn:aws:sns:us-east-1:9:other")
        assert (await post_sns(client, foreign)).status == 403
        # Readiness reports the outage; liveness does not depend on Redis.
        assert (await client.get("/health")).status == 503
        assert (await client.get("/livez")).status == 200


async def test_metrics_count_events_and_refusals(
    tracker: TestClient[Any, Any], signer: SnsSigner
) -> None:
    bounced = ("sesflow_events_total", {"type": "bounced"})
    refused = ("sesflow_tracker_sns_verification_failures_total", {"reason": "topic"})
    before = [await metric(tracker, name, **labels) for name, labels in (bounced, refused)]
    bounce = load_payload("identity_bounce_permanent_multi.json")
    await post_sns(tracker, signer.notification(bounce))
    await post_sns(tracker, signer.notification(delivery(), topic_arn="arn:aws:sns:x:1:other"))
    after = [await metric(tracker, name, **labels) for name, labels in (bounced, refused)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1]


async def test_result_alias_route(tracker: TestClient[Any, Any], signer: SnsSigner) -> None:
    resp = await tracker.post(
        "/v1/events/result",
        data=json.dumps(signer.notification(delivery())),
        headers={"Content-Type": "text/plain; charset=UTF-8"},
    )
    assert resp.status == 200
