"""The bounce and complaint rules: parsing (pure), then signed SNS through the tracker app into a
real Redis: what suppresses, what does not, and the soft-bounce limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sesflow.common.keys import Keys
from sesflow.common.settings import Settings
from sesflow.common.suppression import SuppressionList
from sesflow.tracker import ses_events

from support.snssign import SnsSigner, sns_timestamp
from support.trackerkit import post_sns, stream_events

EVENTS = Keys().partition(0).events


def bounce(ses_id: str, email: str, kind: str = "Transient", subtype: str = "General") -> Any:
    """An SES Bounce event (event publishing) for one recipient, bounced now."""
    return {
        "eventType": "Bounce",
        "mail": {"messageId": ses_id, "timestamp": sns_timestamp()},
        "bounce": {
            "timestamp": sns_timestamp(),
            "bounceType": kind,
            "bounceSubType": subtype,
            "bouncedRecipients": [{"emailAddress": email, "diagnosticCode": "smtp; 452 full"}],
        },
    }


def complaint(ses_id: str, email: str, feedback_type: str) -> Any:
    return {
        "notificationType": "Complaint",
        "mail": {"messageId": ses_id, "destination": [email]},
        "complaint": {
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": feedback_type,
        },
    }


def delay(ses_id: str, email: str, delay_type: str) -> Any:
    return {
        "eventType": "DeliveryDelay",
        "mail": {"messageId": ses_id, "destination": [email]},
        "deliveryDelay": {
            "delayType": delay_type,
            "delayedRecipients": [{"emailAddress": email, "diagnosticCode": "smtp; 421 busy"}],
        },
    }


def drafts(message: Any) -> list[ses_events.Draft]:
    return ses_events.normalise(ses_events.decode(message)).drafts


# --- parsing ------------------------------------------------------------------------------------


def test_a_bounce_from_ses_own_suppression_list_does_not_suppress() -> None:
    [draft] = drafts(bounce("m", "a@x.io", "Permanent", "OnAccountSuppressionList"))
    assert (draft.event.type, draft.event.bounce_type, draft.event.bounce_subtype) == (
        "bounced",
        "Permanent",
        "OnAccountSuppressionList",
    )
    assert draft.suppress == ""
    for subtype in ("General", "NoEmail", "Suppressed", "UnsubscribedRecipient"):
        [hard] = drafts(bounce("m", "a@x.io", "Permanent", subtype))
        assert hard.suppress == "bounce", subtype


@pytest.mark.parametrize("feedback_type", ["not-spam", "NOT-SPAM"])
def test_a_not_spam_complaint_does_not_suppress(feedback_type: str) -> None:
    [draft] = drafts(complaint("m", "a@x.io", feedback_type))
    assert (draft.event.type, draft.event.detail, draft.suppress) == (
        "complained",
        feedback_type,
        "",
    )


@pytest.mark.parametrize("feedback_type", ["abuse", "fraud", "virus", "other", ""])
def test_every_other_complaint_suppresses(feedback_type: str) -> None:
    [draft] = drafts(complaint("m", "a@x.io", feedback_type))
    assert draft.suppress == "complaint"


def test_a_delay_carries_its_type_first_in_its_detail_and_never_suppresses() -> None:
    [draft] = drafts(delay("m", "a@x.io", "MailboxFull"))
    assert (draft.event.type, draft.event.detail, draft.suppress) == (
        "delivery_delayed",
        "MailboxFull smtp; 421 busy",
        "",
    )


# --- through the tracker ------------------------------------------------------------------------


@pytest.fixture
def limit_settings(make_settings: Callable[..., Settings], signer: SnsSigner) -> Settings:
    return make_settings(SNS_CERT_URL_PATTERN=signer.pattern, SNS_TOPIC_ARNS=signer.topic_arn)


async def post_all(client: TestClient[Any, Any], bodies: list[Any]) -> list[Any]:
    answers = []
    for body in bodies:
        resp = await post_sns(client, body)
        assert resp.status == 200, await resp.text()
        answers.append(await resp.json())
    return answers


async def test_three_soft_bounces_suppress_two_do_not(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    suppressions = SuppressionList(redis, Keys())
    first, second, third = (signer.notification(bounce(f"m{n}", "Soft@x.io")) for n in range(3))
    # SNS redelivers the first two (same MessageId): neither counts again.
    await post_all(tracker, [first, first, second, second])
    assert await suppressions.get("soft@x.io") is None
    assert await redis.zcard(Keys().soft_bounces("soft@x.io")) == 2
    await post_all(tracker, [third])
    entry = await suppressions.get("soft@x.io")
    assert entry is not None and entry.reason == "soft_bounce"
    assert "MailboxFull" not in entry.detail and "General" in entry.detail
    events = await stream_events(redis, EVENTS)
    assert [e.bounce_type for e in events] == ["Transient"] * 3  # recorded once each
    # Lifting the suppression forgets the bounces: the next one starts a new count.
    assert await suppressions.remove("Soft@x.io")
    assert not await redis.exists(Keys().soft_bounces("soft@x.io"))
    await post_all(tracker, [signer.notification(bounce("m3", "soft@x.io"))])
    assert await suppressions.get("soft@x.io") is None


async def test_the_same_bounce_on_two_topics_counts_once(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    """Identity notifications and event publishing both on: two SNS messages, one bounce."""
    once = bounce("m1", "twice@x.io")
    await post_all(tracker, [signer.notification(once), signer.notification(once)])
    assert await redis.zcard(Keys().soft_bounces("twice@x.io")) == 1


async def test_bounces_about_the_mail_do_not_count(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    bodies = [
        signer.notification(bounce(f"m{n}", "big@x.io", "Transient", subtype))
        for n, subtype in enumerate(
            ("MessageTooLarge", "ContentRejected", "AttachmentRejected", "MessageTooLarge")
        )
    ]
    bodies += [signer.notification(bounce(f"u{n}", "big@x.io", "Undetermined")) for n in range(3)]
    await post_all(tracker, bodies)
    assert not await redis.exists(Keys().soft_bounces("big@x.io"))
    assert await SuppressionList(redis, Keys()).get("big@x.io") is None


async def test_soft_bounce_limit_zero_turns_the_rule_off(
    make_settings: Callable[..., Settings],
    signer: SnsSigner,
    start_tracker: Callable[[Settings], Any],
    redis: Any,
) -> None:
    settings = make_settings(
        SNS_CERT_URL_PATTERN=signer.pattern, SNS_TOPIC_ARNS=signer.topic_arn, SOFT_BOUNCE_LIMIT=0
    )
    async with start_tracker(settings) as client:
        await post_all(client, [signer.notification(bounce(f"m{n}", "a@x.io")) for n in range(4)])
    assert not await redis.exists(Keys().soft_bounces("a@x.io"))
    assert await SuppressionList(redis, Keys()).get("a@x.io") is None


async def test_a_lower_limit_suppresses_sooner(
    make_settings: Callable[..., Settings],
    signer: SnsSigner,
    start_tracker: Callable[[Settings], Any],
    redis: Any,
) -> None:
    settings = make_settings(
        SNS_CERT_URL_PATTERN=signer.pattern, SNS_TOPIC_ARNS=signer.topic_arn, SOFT_BOUNCE_LIMIT=1
    )
    async with start_tracker(settings) as client:
        await post_all(client, [signer.notification(bounce("m1", "a@x.io", subtype="MailboxFull"))])
    entry = await SuppressionList(redis, Keys()).get("a@x.io")
    assert entry is not None and entry.reason == "soft_bounce"


async def test_an_address_taken_off_the_list_is_not_put_back_by_ses_own_list(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    """The operator removed it from sesflow's list; SES still had it on its own, and says so."""
    refused = bounce("m1", "back@x.io", "Permanent", "OnAccountSuppressionList")
    [answer] = await post_all(tracker, [signer.notification(refused)])
    assert answer == {"status": "processed", "events": 1}
    assert await SuppressionList(redis, Keys()).get("back@x.io") is None
    [event] = await stream_events(redis, EVENTS)
    assert (event.type, event.bounce_subtype) == ("bounced", "OnAccountSuppressionList")


async def test_not_spam_complaint_is_recorded_and_does_not_suppress(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    await post_all(tracker, [signer.notification(complaint("m1", "fan@x.io", "not-spam"))])
    assert await SuppressionList(redis, Keys()).get("fan@x.io") is None
    [event] = await stream_events(redis, EVENTS)
    assert (event.type, event.detail, event.email) == ("complained", "not-spam", "fan@x.io")


async def test_a_delay_is_recorded_with_its_type_and_suppresses_nothing(
    tracker: TestClient[Any, Any], signer: SnsSigner, redis: Any
) -> None:
    await post_all(tracker, [signer.notification(delay("m1", "slow@x.io", "MailboxFull"))] * 2)
    [event] = await stream_events(redis, EVENTS)  # the redelivery was a duplicate
    assert (event.type, event.email) == ("delivery_delayed", "slow@x.io")
    assert event.detail.split()[0] == "MailboxFull"
    assert await SuppressionList(redis, Keys()).get("slow@x.io") is None
