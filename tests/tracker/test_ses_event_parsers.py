"""The per-type SES parsers of `tracker.ses_events`, pure: a notification in, drafts out."""

from __future__ import annotations

from typing import Any

import pytest

from sesflow.common.schema import RID_TAG, TOPIC_TAG
from sesflow.tracker import ses_events
from sesflow.tracker.ses_events import MAX_DETAIL, PARSERS, Feedback, normalise

STAMP = "2024-11-24T15:20:34.567Z"
STAMP_MS = 1732461634567
MAIL_STAMP = "2024-11-24T15:20:00.000Z"
MAIL_STAMP_MS = 1732461600000


def parse(kind: str, *, destination: tuple[str, ...] = ("a@x.io",), **detail: Any) -> Feedback:
    body: dict[str, Any] = {
        "eventType": kind,
        "mail": {"messageId": "ses-1", "timestamp": MAIL_STAMP, "destination": list(destination)},
        **detail,
    }
    return normalise(ses_events.decode(body))


def test_every_documented_type_has_a_parser() -> None:
    assert set(PARSERS) == {
        "Bounce",
        "Complaint",
        "Delivery",
        "DeliveryDelay",
        "Send",
        "Reject",
        "Open",
        "Click",
        "Rendering Failure",
        "Subscription",
    }


@pytest.mark.parametrize(
    ("kind", "event_type"),
    [
        ("Bounce", "bounced"),
        ("Complaint", "complained"),
        ("Delivery", "delivered"),
        ("DeliveryDelay", "delivery_delayed"),
        ("Send", "ses_send"),
        ("Reject", "ses_rejected"),
        ("Open", "opened"),
        ("Click", "clicked"),
        ("Rendering Failure", "rendering_failed"),
        ("Subscription", "subscription"),
    ],
)
def test_a_missing_detail_object_still_names_the_type(kind: str, event_type: str) -> None:
    feedback = parse(kind, destination=("a@x.io", "", "b@x.io"))
    assert [(d.event.type, d.event.email) for d in feedback.drafts] == [
        (event_type, "a@x.io"),
        (event_type, "b@x.io"),
    ]
    assert {d.event.ses_id for d in feedback.drafts} == {"ses-1"}


def test_no_address_anywhere_gives_one_event_without_one() -> None:
    [draft] = parse("Bounce", destination=()).drafts
    assert (draft.event.type, draft.event.email) == ("bounced", "")


def test_the_identity_notification_type_picks_the_same_parser() -> None:
    note = ses_events.decode(
        b'{"notificationType":"Delivery","delivery":{"recipients":["r@x.io"],'
        b'"smtpResponse":"250 ok"},"mail":{"messageId":"m","destination":["d@x.io"]}}'
    )
    [draft] = normalise(note).drafts
    assert (draft.event.type, draft.event.email, draft.event.detail) == (
        "delivered",
        "r@x.io",
        "250 ok",
    )


def test_bounce_names_its_recipients_and_suppresses_only_permanent_ones() -> None:
    recipients = [
        {"emailAddress": "a@x.io", "diagnosticCode": "smtp; 550 User unknown"},
        {"emailAddress": "b@x.io", "status": "5.1.1"},
        {"emailAddress": ""},
    ]
    bounce = {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": recipients,
        "timestamp": STAMP,
    }
    drafts = parse("Bounce", destination=("a@x.io", "b@x.io", "c@x.io"), bounce=bounce).drafts
    assert [(d.event.email, d.event.detail, d.suppress) for d in drafts] == [
        ("a@x.io", "smtp; 550 User unknown", "bounce"),
        ("b@x.io", "5.1.1", "bounce"),
    ]
    assert {(d.event.bounce_type, d.event.bounce_subtype, d.event.ts) for d in drafts} == {
        ("Permanent", "General", STAMP_MS)
    }
    transient = {**bounce, "bounceType": "Transient", "bouncedRecipients": []}
    [draft] = parse("Bounce", bounce=transient).drafts
    assert (draft.event.email, draft.event.bounce_type, draft.suppress) == (
        "a@x.io",
        "Transient",
        "",
    )


def test_a_bounce_without_a_type_is_undetermined() -> None:
    [draft] = parse("Bounce", bounce={}).drafts
    assert (draft.event.bounce_type, draft.suppress) == ("Undetermined", "")


def test_complaint_suppresses_its_recipients_with_the_feedback_type() -> None:
    complaint = {
        "complainedRecipients": [{"emailAddress": "c@x.io"}],
        "complaintSubType": "OnAccountSuppressionList",
    }
    # SES's own list refused it: the subtype is the detail, and sesflow's list is left alone.
    [draft] = parse("Complaint", complaint=complaint).drafts
    assert (draft.event.email, draft.event.detail, draft.suppress) == (
        "c@x.io",
        "OnAccountSuppressionList",
        "",
    )
    typed = {**complaint, "complaintFeedbackType": "abuse"}
    [draft] = parse("Complaint", complaint=typed).drafts
    assert (draft.event.detail, draft.suppress) == ("abuse", "complaint")


def test_delivery_delay_joins_its_type_and_each_diagnostic() -> None:
    delay = {
        "delayType": "TransientCommunicationFailure",
        "delayedRecipients": [{"emailAddress": "d@x.io", "diagnosticCode": "smtp; 421"}],
    }
    [named] = parse("DeliveryDelay", deliveryDelay=delay).drafts
    assert (named.event.email, named.event.detail) == (
        "d@x.io",
        "TransientCommunicationFailure smtp; 421",
    )
    [unnamed] = parse("DeliveryDelay", deliveryDelay={**delay, "delayedRecipients": []}).drafts
    assert (unnamed.event.email, unnamed.event.detail) == (
        "a@x.io",
        "TransientCommunicationFailure",
    )


def test_reject_rendering_failure_and_subscription_details() -> None:
    assert parse("Reject", reject={"reason": " Bad content "}).drafts[0].event.detail == (
        "Bad content"
    )
    failure = {"templateName": "T", "errorMessage": "Attribute 'x' is not present"}
    rendering = parse("Rendering Failure", failure=failure).drafts[0].event
    assert rendering.detail == "T: Attribute 'x' is not present"
    assert parse("Rendering Failure", failure={"templateName": "T"}).drafts[0].event.detail == "T"
    sub = {"contactList": "News", "newTopicPreferences": {"unsubscribeAll": True}}
    assert parse("Subscription", subscription=sub).drafts[0].event.detail == "News unsubscribeAll"
    quiet = {"contactList": "News", "newTopicPreferences": {"unsubscribeAll": False}}
    assert parse("Subscription", subscription=quiet).drafts[0].event.detail == "News"


def test_opens_and_clicks_are_first_touches_with_their_own_time() -> None:
    [opened] = parse("Open", open={"timestamp": STAMP}).drafts
    assert (opened.touch, opened.event.ts) == ("open", STAMP_MS)
    [clicked] = parse(
        "Click", click={"link": "https://x.io/" + "a" * 3000, "timestamp": STAMP}
    ).drafts
    assert (clicked.touch, clicked.event.ts, len(clicked.event.url)) == ("click", STAMP_MS, 2000)
    assert parse("Delivery").drafts[0].touch == ""


def test_time_falls_back_to_the_mail_then_to_now() -> None:
    assert parse("Delivery", delivery={"timestamp": "not a time"}).drafts[0].event.ts == (
        MAIL_STAMP_MS
    )
    note = ses_events.decode(b'{"eventType":"Send","mail":{"timestamp":"garbage"}}')
    assert normalise(note).drafts[0].event.ts > STAMP_MS


def test_details_are_clipped() -> None:
    [draft] = parse("Reject", reject={"reason": "x" * (MAX_DETAIL + 50)}).drafts
    assert len(draft.event.detail) == MAX_DETAIL


def test_an_unknown_or_missing_type_is_feedback_unknown() -> None:
    [future] = parse("FutureEventType").drafts
    assert (future.event.type, future.event.detail, future.event.ts) == (
        "feedback_unknown",
        "FutureEventType",
        MAIL_STAMP_MS,
    )
    [nothing] = normalise(ses_events.decode(b'{"mail":{"destination":["a@x.io"]}}')).drafts
    assert (nothing.event.type, nothing.event.detail) == (
        "feedback_unknown",
        "no eventType/notificationType",
    )


def test_the_request_id_comes_from_the_tag_then_the_header() -> None:
    mail = {
        "messageId": "m",
        "tags": {RID_TAG: ["1-0_3"], TOPIC_TAG: ["news"]},
        "headers": [{"name": "X-Request-ID", "value": "1-0_4"}],
    }
    feedback = normalise(ses_events.decode({"eventType": "Send", "mail": mail}))
    assert (feedback.ses_id, feedback.rid, feedback.topic_tag) == ("m", "1-0_3", "news")
    headers_only = {**mail, "tags": {}}
    feedback = normalise(ses_events.decode({"eventType": "Send", "mail": headers_only}))
    assert (feedback.rid, feedback.topic_tag) == ("1-0_4", "")
    bare = normalise(ses_events.decode({"eventType": "Send", "mail": {"messageId": "m"}}))
    assert bare.rid == ""
