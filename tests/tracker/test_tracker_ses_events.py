"""Every SES event type, in both formats, from the sample payloads: signed, posted to the webhook,
and read back from the right partition's `events` stream as normalised events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from aiohttp.test_utils import TestClient

from sesflow.common.keys import Keys
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList
from sesflow.tracker import ses_events

from support.snssign import SnsSigner, sign, sns_timestamp
from support.trackerkit import PAYLOADS, load_payload, post_sns, stream_events

MSG = "1732461234567-0"
TOPIC = "newsletter/2024-11"  # the sender tags it as "newsletter_2024-11"
PARTITIONS = 4
KEYS = Keys("sesflow", PARTITIONS)
PART = KEYS.for_message(MSG)
assert PART.index != 0, "pick a msg_id outside partition 0 so misplaced events show"


class Expected(NamedTuple):
    type: str
    email: str
    rid_index: int
    detail: str = ""  # substring
    bounce: tuple[str, str] = ("", "")
    suppressed: str = ""  # suppression reason, "" = not suppressed
    url: str = ""
    unique: bool = False


EXPECTED: dict[str, list[Expected]] = {
    "identity_bounce_permanent_multi.json": [
        Expected(
            "bounced", "jane@example.com", 1, "User unknown", ("Permanent", "General"), "bounce"
        ),
        Expected(
            "bounced", "richard@example.com", 1, "User unknown", ("Permanent", "General"), "bounce"
        ),
    ],
    "identity_bounce_transient.json": [
        Expected("bounced", "full@example.com", 2, "Mailbox full", ("Transient", "MailboxFull")),
    ],
    "identity_complaint.json": [
        Expected("complained", "annoyed@example.com", 3, "abuse", suppressed="complaint"),
    ],
    "identity_delivery.json": [
        Expected("delivered", "happy@example.com", 4, "250 2.6.0"),
    ],
    "event_send.json": [Expected("ses_send", "recipient@example.com", 10)],
    "event_reject.json": [Expected("ses_rejected", "recipient@example.com", 11, "Bad content")],
    "event_bounce.json": [
        Expected(
            "bounced",
            "recipient@example.com",
            12,
            "suppressed sending",
            ("Permanent", "Suppressed"),
            "bounce",
        ),
    ],
    "event_bounce_undetermined.json": [
        Expected("bounced", "unsure@example.com", 13, "", ("Undetermined", "Undetermined")),
    ],
    "event_complaint.json": [
        Expected("complained", "recipient@example.com", 14, "abuse", suppressed="complaint"),
    ],
    "event_delivery.json": [Expected("delivered", "recipient@example.com", 15, "250 2.6.0")],
    "event_delivery_delay.json": [
        Expected(
            "delivery_delayed", "recipient@example.com", 16, "TransientCommunicationFailure smtp"
        ),
    ],
    "event_open.json": [Expected("opened", "recipient@example.com", 17, unique=True)],
    "event_click.json": [
        Expected(
            "clicked",
            "recipient@example.com",
            18,
            url="https://www.example.com/offers?utm_source=newsletter",
            unique=True,
        ),
    ],
    "event_rendering_failure.json": [
        Expected("rendering_failed", "recipient@example.com", 19, "MyTemplate: Attribute"),
    ],
    "event_subscription.json": [
        Expected("subscription", "recipient@example.com", 20, "Newsletter unsubscribeAll"),
    ],
    "event_unknown_type.json": [
        Expected("feedback_unknown", "recipient@example.com", 21, "FutureEventType"),
    ],
}


def test_every_sample_payload_has_expectations() -> None:
    samples = {p.name for p in PAYLOADS.glob("*.json")} - {"go_service_body.json"}
    assert samples == set(EXPECTED)
    kinds = {ses_events.decode((PAYLOADS / name).read_bytes()).kind for name in samples}
    assert kinds >= {
        "Bounce",
        "Complaint",
        "Delivery",
        "Send",
        "Reject",
        "DeliveryDelay",
        "Open",
        "Click",
        "Rendering Failure",
        "Subscription",
    }


@pytest.fixture
def partitioned_settings(make_settings: Callable[..., Settings], signer: SnsSigner) -> Settings:
    return make_settings(
        SNS_CERT_URL_PATTERN=signer.pattern,
        SNS_TOPIC_ARNS=signer.topic_arn,
        SEND_PARTITIONS=PARTITIONS,
    )


async def store_message(redis: Any) -> None:
    """What the dispatcher and the sender leave behind for the tracker to correlate with."""
    await redis.hset(PART.message(MSG), mapping={"topic": TOPIC, "subject": "s", "html": "<p>"})
    transient = load_payload("identity_bounce_transient.json")["mail"]["messageId"]
    await redis.set(KEYS.ses_message(transient), f"{MSG}_2")


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_sample_payload_is_normalised(
    partitioned_settings: Settings,
    start_tracker: Callable[[Settings], Any],
    signer: SnsSigner,
    redis: Any,
    name: str,
) -> None:
    await store_message(redis)
    payload = load_payload(name)
    async with start_tracker(partitioned_settings) as client:
        resp = await post_sns(client, signer.notification(payload))
        assert resp.status == 200, await resp.text()
    for other in KEYS.partitions:
        if other is not PART:
            assert await redis.xlen(other.events) == 0
    events = await stream_events(redis, PART.events)
    assert len(events) == len(EXPECTED[name])
    suppressions = SuppressionList(redis, KEYS)
    for event, want in zip(events, EXPECTED[name], strict=True):
        assert (event.type, event.email, event.msg_id, event.index) == (
            want.type,
            want.email,
            MSG,
            want.rid_index,
        )
        assert event.topic == TOPIC
        assert event.n == 1
        assert event.ses_id == payload["mail"]["messageId"]
        assert want.detail in event.detail
        assert (event.bounce_type, event.bounce_subtype) == want.bounce
        assert (event.url, event.unique) == (want.url, want.unique)
        assert event.ts > 1_700_000_000_000
        entry = await suppressions.get(want.email)
        assert (entry.reason if entry else "") == want.suppressed
        if entry:
            assert entry.topic == TOPIC


async def test_multi_recipient_bounce_gives_one_event_each(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    payload = load_payload("identity_bounce_permanent_multi.json")
    assert len(payload["mail"]["destination"]) == 3
    assert (await post_sns(tracker, signer.notification(payload))).status == 200
    events = await stream_events(redis, Keys().partition(0).events)
    assert [e.email for e in events] == ["jane@example.com", "richard@example.com"]
    assert await SuppressionList(redis, Keys()).get("mary@example.com") is None


async def test_topic_falls_back_to_the_tag_then_to_nothing(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    """Content hash expired: tagged events keep the sanitised topic, identity ones none."""
    for name in ("event_delivery.json", "identity_delivery.json"):
        assert (await post_sns(tracker, signer.notification(load_payload(name)))).status == 200
    tagged, untagged = await stream_events(redis, Keys().partition(0).events)
    assert (tagged.topic, tagged.msg_id, tagged.index) == ("newsletter_2024-11", MSG, 15)
    assert (untagged.topic, untagged.msg_id, untagged.index) == ("", MSG, 4)


async def test_unknown_mail_lands_in_partition_zero_uncorrelated(
    partitioned_settings: Settings,
    start_tracker: Callable[[Settings], Any],
    signer: SnsSigner,
    redis: Any,
) -> None:
    payload = load_payload("identity_bounce_transient.json")  # no tag, no header, no index
    async with start_tracker(partitioned_settings) as client:
        assert (await post_sns(client, signer.notification(payload))).status == 200
    [event] = await stream_events(redis, KEYS.partition(0).events)
    assert (event.type, event.msg_id, event.index, event.topic) == ("bounced", "", -1, "")


async def test_go_service_minimal_message_is_normalised(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    body = load_payload("go_service_body.json")
    for kind, expected in (("Bounce", "bounced"), ("Complaint", "complained")):
        body["Message"]["eventType"] = kind
        body.update(
            MessageId=f"go-{kind}",
            TopicArn=signer.topic_arn,
            Timestamp=sns_timestamp(),
            SigningCertURL=signer.cert_url,
        )
        assert (await post_sns(tracker, sign(body, signer.key, 2))).status == 200
        event = (await stream_events(redis, Keys().partition(0).events))[-1]
        assert event.type == expected
        assert event.email == ""  # the Go service's shape names no recipient


async def test_ses_open_then_pixel_style_open_share_unique_logic(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    payload = load_payload("event_open.json")
    for _ in range(2):
        assert (await post_sns(tracker, signer.notification(payload))).status == 200
    first, second = await stream_events(redis, Keys().partition(0).events)
    assert (first.unique, second.unique) == (True, False)


def test_unknown_fields_and_null_values_are_ignored() -> None:
    note = ses_events.decode(
        b'{"eventType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"a@x.io",'
        b'"extra":{"deep":[1]}}],"complaintSubType":null,"complaintFeedbackType":null},'
        b'"mail":{"messageId":"m","destination":["a@x.io"],"newField":true}}'
    )
    feedback = ses_events.normalise(note)
    [draft] = feedback.drafts
    assert (draft.event.type, draft.event.email, draft.suppress) == (
        "complained",
        "a@x.io",
        "complaint",
    )
