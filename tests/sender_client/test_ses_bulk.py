"""SendBulkEmail in the SES clients: the request is what SESv2's model accepts, every entry
status maps to what sesflow must do, and an answer that cannot be read leaves entries ambiguous."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import botocore.session
import msgspec
import pytest
from aiohttp import web
from botocore.validate import ParamValidator

from sesflow.cli.embedded import free_port
from sesflow.common.errors import (
    SesAmbiguous,
    SesEntryTransient,
    SesPaused,
    SesQuotaExceeded,
    SesRejected,
    SesSetupFault,
    SesThrottled,
)
from sesflow.sender.ses_boto3 import Boto3SesClient, bulk_kwargs, request_kwargs
from sesflow.sender.ses_client import (
    Attachment,
    BulkEmail,
    BulkEntry,
    OutgoingEmail,
    SesClient,
    _EntryResult,
    bulk_outcomes,
    encode_bulk_request,
    encode_request,
    entry_outcome,
)

from support.sesstub import SesStub

MODEL = botocore.session.get_session().get_service_model("sesv2")

BULK = BulkEmail(
    from_email="news@example.com",
    subject="Hi {{{v0}}}",
    html="<p>{{v0}}</p>",
    text="Hi {{{v0}}}",
    headers=(("X-Campaign", "spring"),),
    reply_to=("help@example.com",),
    configuration_set="events",
    tenant="acme",
    entries=tuple(
        BulkEntry(
            to=f"r{n}@example.org",
            data=json.dumps({"v0": f"<R{n}>"}),
            headers=(("X-Request-ID", f"1-0_{n}"),),
            tags=(("sesflow-rid", f"1-0_{n}"),),
        )
        for n in range(3)
    ),
)


def valid(operation: str, params: dict[str, Any]) -> None:
    shape = MODEL.operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()


def test_requests_match_the_sesv2_model() -> None:
    valid("SendBulkEmail", json.loads(encode_bulk_request(BULK)))
    valid("SendBulkEmail", bulk_kwargs(BULK))
    email = OutgoingEmail(
        from_email="a@example.com",
        to="b@example.org",
        subject="s",
        html="<p>h</p>",
        text="t",
        reply_to=("c@example.com",),
        attachments=(Attachment(FileName="a.txt", ContentType="text/plain", RawContent="aGk="),),
        configuration_set="events",
        tenant="acme",
    )
    valid("SendEmail", json.loads(encode_request(email)))
    kwargs = request_kwargs(email)
    valid("SendEmail", kwargs)
    assert kwargs["Content"]["Simple"]["Attachments"][0]["RawContent"] == b"hi"


def test_every_entry_status_of_the_model_is_mapped() -> None:
    """Every documented refusal (no MessageId) means not sent, each classified as the same error
    of a whole call; TRANSIENT_FAILURE is about that entry, not SES being out of reach."""
    statuses = MODEL.shape_for("BulkEmailStatus").enum
    expected = {
        "ACCOUNT_THROTTLED": SesThrottled,
        "ACCOUNT_DAILY_QUOTA_EXCEEDED": SesQuotaExceeded,
        "ACCOUNT_SENDING_PAUSED": SesPaused,
        "ACCOUNT_SUSPENDED": SesPaused,
        "CONFIGURATION_SET_SENDING_PAUSED": SesPaused,
        "TRANSIENT_FAILURE": SesEntryTransient,
        "MAIL_FROM_DOMAIN_NOT_VERIFIED": SesSetupFault,
        "CONFIGURATION_SET_NOT_FOUND": SesSetupFault,
        "INVALID_SENDING_POOL_NAME": SesSetupFault,
        "SUCCESS": SesAmbiguous,  # without its MessageId
    }
    for status in statuses:
        outcome = entry_outcome(_EntryResult(Status=status, Error="why"), "r@x.org")
        assert isinstance(outcome, expected.get(status, SesRejected)), status
    assert entry_outcome(_EntryResult(Status="SUCCESS", MessageId="m-1")) == "m-1"
    # a rejection that names our unverified identity, not the recipient, is a setup fault
    unverified = (
        "Email address is not verified. The following identities failed the check in region "
        "US-EAST-1: news@example.com"
    )
    ours = entry_outcome(_EntryResult(Status="MESSAGE_REJECTED", Error=unverified), "r@x.org")
    assert isinstance(ours, SesSetupFault) and ours.reason == "identity"
    theirs = unverified.replace("news@example.com", "r@x.org")
    rejected = entry_outcome(_EntryResult(Status="MESSAGE_REJECTED", Error=theirs), "r@x.org")
    assert isinstance(rejected, SesRejected) and rejected.code == "MessageRejected"


def test_an_entry_we_cannot_read_as_a_refusal_may_have_been_sent() -> None:
    """SES said yes to the call: an entry is "not sent" only when its status is a documented
    refusal and it carries no MessageId. Anything else may be on its way (ON_AMBIGUOUS)."""
    for result in (
        _EntryResult(),  # no Status at all
        _EntryResult(Status="SOMETHING_NEW"),
        _EntryResult(Status="success", MessageId="m-1"),
        _EntryResult(Status="TRANSIENT_FAILURE", MessageId="m-1"),
        _EntryResult(Status="MESSAGE_REJECTED", MessageId="m-1"),
        _EntryResult(Status="FAILED", MessageId="m-1"),
    ):
        assert isinstance(entry_outcome(result, "r@x.org"), SesAmbiguous), result
    # the names SES's documentation uses beside the enum's are refusals too
    for status, kind in {
        "CONFIGURATION_SET_DOES_NOT_EXIST": SesSetupFault,
        "TEMPLATE_DOES_NOT_EXIST": SesRejected,
        "INVALID_PARAMETER_VALUE": SesRejected,
    }.items():
        assert isinstance(entry_outcome(_EntryResult(Status=status), "r@x.org"), kind), status


def test_an_unreadable_or_short_answer_leaves_every_entry_ambiguous() -> None:
    one = json.dumps({"BulkEmailEntryResults": [{"Status": "SUCCESS", "MessageId": "m"}]})
    two = ["a@x.org", "b@x.org"]
    assert all(isinstance(o, SesAmbiguous) for o in bulk_outcomes(one.encode(), two))
    assert all(isinstance(o, SesAmbiguous) for o in bulk_outcomes(b"<html>", two))
    assert bulk_outcomes(one.encode(), two[:1]) == ["m"]


@pytest.mark.parametrize("kind", ["native", "boto3"])
async def test_both_clients_send_bulk_and_get_one_outcome_per_entry(
    stub: SesStub, ses_settings: Callable[..., Any], kind: str
) -> None:
    settings = ses_settings()
    client = SesClient(settings) if kind == "native" else Boto3SesClient(settings)
    stub.configure(entry_statuses={"r1@example.org": ["MESSAGE_REJECTED"]})
    try:
        outcomes = await client.send_bulk_email(BULK)
        assert isinstance(outcomes[0], str) and isinstance(outcomes[2], str)
        assert isinstance(outcomes[1], SesRejected) and outcomes[1].code == "MessageRejected"
        stub.configure(error_rate=1.0, error_status=429)
        with pytest.raises(SesThrottled):
            await client.send_bulk_email(BULK)
    finally:
        await client.close()
    mail = stub.mail["r2@example.org"][0]
    assert (mail.subject, mail.html, mail.text) == ("Hi <R2>", "<p>&lt;R2&gt;</p>", "Hi <R2>")
    assert mail.headers == {"X-Campaign": "spring", "X-Request-ID": "1-0_2"}
    assert mail.reply_to == ["help@example.com"]


BULK_PATH = "/v2/email/outbound-bulk-emails"


@pytest.mark.parametrize("kind", ["native", "boto3"])
async def test_both_clients_leave_unreadable_entries_of_a_2xx_ambiguous(
    ses_settings: Callable[..., Any], kind: str
) -> None:
    answer = {
        "BulkEmailEntryResults": [
            {"Status": "SUCCESS", "MessageId": "m-0"},
            {"MessageId": "m-1"},
            {"Status": "QUEUED_SOMEHOW", "MessageId": "m-2"},
            {"Status": "LATER", "Error": "?"},
            {"Status": "MESSAGE_REJECTED", "Error": "Illegal address"},
            {"Status": "TRANSIENT_FAILURE", "Error": "try again"},
        ]
    }

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(answer)

    bulk = msgspec.structs.replace(
        BULK,
        entries=tuple(
            msgspec.structs.replace(BULK.entries[0], to=f"u{n}@example.org") for n in range(6)
        ),
    )
    app = web.Application()
    app.router.add_post(BULK_PATH, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = ses_settings(SES_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    client = SesClient(settings) if kind == "native" else Boto3SesClient(settings)
    try:
        outcomes = await client.send_bulk_email(bulk)
    finally:
        await client.close()
        await runner.cleanup()
    assert outcomes[0] == "m-0"
    assert all(isinstance(o, SesAmbiguous) for o in outcomes[1:4]), outcomes
    assert isinstance(outcomes[4], SesRejected) and outcomes[4].code == "MessageRejected"
    assert isinstance(outcomes[5], SesEntryTransient) and outcomes[5].code == "TRANSIENT_FAILURE"
