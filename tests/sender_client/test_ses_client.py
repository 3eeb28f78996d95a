"""SesClient against the SES stub (and a few hand-made answers): request shape, SigV4, and the
mapping of every kind of failure onto the project's error classes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    NoCredentialsError,
    ParamValidationError,
)
from multidict import CIMultiDict

from sesflow.cli.embedded import free_port
from sesflow.common.errors import (
    ConfigError,
    SesAmbiguous,
    SesError,
    SesPaused,
    SesQuotaExceeded,
    SesRejected,
    SesSetupFault,
    SesThrottled,
    SesTransient,
)
from sesflow.common.settings import Settings
from sesflow.sender.ses_boto3 import error_from_boto
from sesflow.sender.ses_client import (
    OutgoingEmail,
    SesClient,
    classify,
    endpoint_of,
    parse_error,
    setup_reason,
)

from support.sesstub import SesStub

MakeEmail = Callable[..., OutgoingEmail]


@contextlib.asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A one-route server answering SendEmail with `handler`; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v2/email/outbound-emails", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_sends_the_sesv2_request_shape(
    stub: SesStub, client: SesClient, make_email: MakeEmail
) -> None:
    message_id = await client.send_email(make_email(configuration_set="tracking"))
    assert message_id.startswith("0100")
    [body] = stub.recent
    assert body == {
        "FromEmailAddress": "sender@example.com",
        "Destination": {"ToAddresses": ["someone@example.org"]},
        "Content": {
            "Simple": {
                "Subject": {"Data": "Hello", "Charset": "UTF-8"},
                "Body": {"Html": {"Data": "<p>Hi</p>", "Charset": "UTF-8"}},
                "Headers": [{"Name": "X-Request-ID", "Value": "1732461234567-0_3"}],
            }
        },
        "EmailTags": [
            {"Name": "sesflow-rid", "Value": "1732461234567-0_3"},
            {"Name": "sesflow-topic", "Value": "news"},
        ],
        "ConfigurationSetName": "tracking",
    }
    assert stub.recipients == {"someone@example.org": 1}


async def test_empty_optional_parts_are_left_out(
    stub: SesStub, client: SesClient, make_email: MakeEmail
) -> None:
    await client.send_email(make_email(headers=(), tags=(), subject="Ünïcode ✓"))
    [body] = stub.recent
    assert "EmailTags" not in body and "ConfigurationSetName" not in body
    assert "Headers" not in body["Content"]["Simple"]
    assert body["Content"]["Simple"]["Subject"]["Data"] == "Ünïcode ✓"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def expected_signature(
    secret: str, region: str, method: str, path: str, headers: CIMultiDict[str], body: bytes
) -> str:
    """SigV4 computed here from the spec, independently of botocore."""
    authorization = headers["Authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    canonical = "\n".join(
        [
            method,
            path,
            "",
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    amz_date = headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{region}/ses/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret).encode(), amz_date[:8])
    for part in (region, "ses", "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


async def test_request_is_sigv4_signed_for_ses_in_the_region(
    ses_settings: Callable[..., Settings], make_email: MakeEmail
) -> None:
    seen: list[tuple[CIMultiDict[str], bytes, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((CIMultiDict(request.headers), await request.read(), request.path))
        return web.json_response({"MessageId": "m-1"})

    async with serve(handler) as url:
        client = SesClient(
            ses_settings(SES_ENDPOINT_URL=url, AWS_REGION="eu-west-1", AWS_SESSION_TOKEN="tok")
        )
        try:
            assert await client.send_email(make_email()) == "m-1"
        finally:
            await client.close()
    [(headers, body, path)] = seen
    authorization = headers["Authorization"]
    today = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    assert authorization.startswith(
        f"AWS4-HMAC-SHA256 Credential=AKIDTESTING/{today}/eu-west-1/ses/aws4_request,"
    )
    assert "host" in authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert headers["X-Amz-Security-Token"] == "tok"
    assert headers["Content-Type"] == "application/json"
    signature = authorization.rsplit("Signature=", 1)[1]
    assert signature == expected_signature(
        "testing-secret", "eu-west-1", "POST", path, headers, body
    )


async def test_refreshable_credentials_are_refreshed_before_signing(
    stub: SesStub, ses_settings: Callable[..., Settings], make_email: MakeEmail
) -> None:
    refreshed: list[int] = []
    authorizations: list[str] = []

    def refresh() -> dict[str, str]:
        refreshed.append(1)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {
            "access_key": f"AKIDREFRESHED{len(refreshed)}",
            "secret_key": "s",
            "token": "t",
            "expiry_time": expiry.isoformat(),
        }

    async def handler(request: web.Request) -> web.Response:
        authorizations.append(request.headers["Authorization"])
        return web.json_response({"MessageId": "m"})

    async with serve(handler) as url:
        client = SesClient(ses_settings(SES_ENDPOINT_URL=url))
        client.credentials = RefreshableCredentials(
            access_key="AKIDOLD",
            secret_key="s",
            token="t",
            expiry_time=datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1),
            refresh_using=refresh,
            method="test",
        )
        try:
            await client.send_email(make_email())
            await client.send_email(make_email())
        finally:
            await client.close()
    assert len(refreshed) == 1
    assert all("Credential=AKIDREFRESHED1/" in a for a in authorizations)


def test_an_endpoint_that_is_not_http_is_a_config_error(
    ses_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ConfigError):
        SesClient(ses_settings(SES_ENDPOINT_URL="email.eu-west-1.amazonaws.com"))


def test_endpoint_defaults_to_the_regional_ses_endpoint(
    make_settings: Callable[..., Settings],
) -> None:
    assert endpoint_of(make_settings(AWS_REGION="eu-central-1")) == (
        "https://email.eu-central-1.amazonaws.com"
    )
    assert endpoint_of(make_settings(SES_ENDPOINT_URL="http://127.0.0.1:9/")) == (
        "http://127.0.0.1:9"
    )


# --- error mapping against the stub ------------------------------------------------------------

STUB_FAULTS: list[tuple[dict[str, Any], type[SesError], str]] = [
    ({"error_rate": 1.0}, SesThrottled, "TooManyRequestsException"),
    ({"max_24h": 0}, SesQuotaExceeded, "LimitExceededException"),
    ({"pause_seconds": 60}, SesPaused, "SendingPausedException"),
    (
        {"error_rate": 1.0, "error_status": 400, "error_code": "AccountSuspendedException"},
        SesPaused,
        "AccountSuspendedException",
    ),
    ({"reject_pattern": "@example\\.org$"}, SesRejected, "MessageRejected"),
    (
        {
            "error_rate": 1.0,
            "error_status": 400,
            "error_code": "MailFromDomainNotVerifiedException",
        },
        SesSetupFault,
        "MailFromDomainNotVerifiedException",
    ),
    ({"error_rate": 1.0, "error_status": 400}, SesRejected, "BadRequestException"),
    ({"error_rate": 1.0, "error_status": 404}, SesSetupFault, "NotFoundException"),
    # A 5xx is no proof that nothing was sent (sender.ses_client's table).
    ({"error_rate": 1.0, "error_status": 500}, SesAmbiguous, "InternalFailure"),
    ({"error_rate": 1.0, "error_status": 502}, SesAmbiguous, "InternalFailure"),
    ({"error_rate": 1.0, "error_status": 503}, SesAmbiguous, "ServiceUnavailable"),
    ({"error_rate": 1.0, "error_status": 504}, SesAmbiguous, "InternalFailure"),
    ({"disconnect_rate": 1.0}, SesAmbiguous, "ConnectionLost"),
]


@pytest.mark.parametrize(("knobs", "error", "code"), STUB_FAULTS, ids=[f[2] for f in STUB_FAULTS])
async def test_stub_answers_map_to_error_classes(
    stub: SesStub,
    client: SesClient,
    make_email: MakeEmail,
    knobs: dict[str, Any],
    error: type[SesError],
    code: str,
) -> None:
    stub.configure(**knobs)
    with pytest.raises(error) as raised:
        await client.send_email(make_email())
    assert type(raised.value) is error
    assert raised.value.code == code
    assert stub.sent == 0


async def test_throttling_carries_the_ses_message(
    stub: SesStub, client: SesClient, make_email: MakeEmail
) -> None:
    stub.configure(rate=1, burst=1)
    await client.send_email(make_email())
    with pytest.raises(SesThrottled) as raised:
        await client.send_email(make_email())
    assert raised.value.status == 429
    assert raised.value.message == "Maximum sending rate exceeded."
    assert stub.throttled == 1


async def test_read_timeout_after_sending_is_ambiguous(
    stub: SesStub, ses_settings: Callable[..., Settings], make_email: MakeEmail
) -> None:
    stub.configure(latency_ms=1000)
    client = SesClient(ses_settings(SES_TIMEOUT="0.2"))
    try:
        with pytest.raises(SesAmbiguous) as raised:
            await client.send_email(make_email())
    finally:
        await client.close()
    assert raised.value.code == "Timeout"


async def test_connection_refused_is_transient(
    ses_settings: Callable[..., Settings], make_email: MakeEmail
) -> None:
    client = SesClient(ses_settings(SES_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(SesTransient) as raised:
            await client.send_email(make_email())
    finally:
        await client.close()
    assert raised.value.code == "ConnectError"


async def test_pool_exhaustion_within_the_connect_timeout_is_transient(
    stub: SesStub, ses_settings: Callable[..., Settings], make_email: MakeEmail
) -> None:
    """Waiting for a pooled connection is part of connecting: nothing was sent yet."""

    stub.configure(latency_ms=800)
    client = SesClient(ses_settings(SES_TIMEOUT="0.3"), max_connections=1)
    try:
        results = await asyncio.gather(
            client.send_email(make_email()), client.send_email(make_email()), return_exceptions=True
        )
    finally:
        await client.close()
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["SesAmbiguous", "SesTransient"]


XML_THROTTLING = (
    b'<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/">\n  <Error>\n'
    b"    <Type>Sender</Type>\n    <Code>Throttling</Code>\n"
    b"    <Message>{message}</Message>\n  </Error>\n"
    b"  <RequestId>8f23e6e6-b4f2-4572-b426-343b370cb32c</RequestId>\n</ErrorResponse>\n"
)

RAW_ANSWERS: list[tuple[int, bytes, dict[str, str], type[SesError], str]] = [
    (
        400,
        XML_THROTTLING.replace(b"{message}", b"Maximum sending rate exceeded."),
        {"Content-Type": "text/xml"},
        SesThrottled,
        "Throttling",
    ),
    (
        400,
        XML_THROTTLING.replace(b"{message}", b"Daily message quota exceeded."),
        {"Content-Type": "text/xml"},
        SesQuotaExceeded,
        "Throttling",
    ),
    (
        400,
        b'{"__type": "com.amazonaws.sesv2#MessageRejected", "message": "Illegal address"}',
        {},
        SesRejected,
        "MessageRejected",
    ),
    (
        400,
        b'{"Message": "Sending paused"}',
        {"x-amzn-ErrorType": "SendingPausedException"},
        SesPaused,
        "SendingPausedException",
    ),
    (
        403,
        b'{"message": "The security token included in the request is expired"}',
        {"x-amzn-ErrorType": "ExpiredTokenException:"},
        SesTransient,
        "ExpiredTokenException",
    ),
    (502, b"<html>Bad gateway</html>", {}, SesAmbiguous, "HTTP502"),
    (504, b"", {}, SesAmbiguous, "HTTP504"),
    (
        503,
        b'{"message": "Service Unavailable"}',
        {"x-amzn-ErrorType": "ServiceUnavailable"},
        SesAmbiguous,
        "ServiceUnavailable",
    ),
    (
        400,
        b'{"message": "Configuration set <news> does not exist."}',
        {"x-amzn-ErrorType": "ConfigurationSetDoesNotExistException"},
        SesSetupFault,
        "ConfigurationSetDoesNotExistException",
    ),
    # A 404 page that no SES error code comes with: the endpoint is not SES.
    (404, b"<html>Not Found</html>", {}, SesSetupFault, "HTTP404"),
    (200, b"not json", {}, SesAmbiguous, "MalformedResponse"),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code"),
    RAW_ANSWERS,
    ids=[f"{a[0]}-{a[4]}-{a[3].__name__}" for a in RAW_ANSWERS],
)
async def test_raw_answers_map_to_error_classes(  # noqa: PLR0913 (pytest: fixtures + parametrize)
    ses_settings: Callable[..., Settings],
    make_email: MakeEmail,
    status: int,
    body: bytes,
    headers: dict[str, str],
    error: type[SesError],
    code: str,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, headers=headers)

    async with serve(handler) as url:
        client = SesClient(ses_settings(SES_ENDPOINT_URL=url))
        try:
            with pytest.raises(error) as raised:
                await client.send_email(make_email())
        finally:
            await client.close()
    assert type(raised.value) is error
    assert raised.value.code == code


def test_parse_error_prefers_the_error_type_header() -> None:
    code, message = parse_error(
        429,
        {"x-amzn-ErrorType": "TooManyRequestsException:http://internal.amazon.com/coral/"},
        b'{"message": "Maximum sending rate exceeded."}',
    )
    assert (code, message) == ("TooManyRequestsException", "Maximum sending rate exceeded.")
    assert parse_error(400, {}, b"") == ("HTTP400", "")
    assert parse_error(400, {}, b"{broken") == ("HTTP400", "")


def test_classify_edge_cases() -> None:
    assert classify(400, "LimitExceededException", "Too many resources") is SesThrottled
    assert classify(403, "AccessDeniedException", "") is SesPaused
    assert classify(400, "Throttling", "Daily message quota exceeded.") is SesQuotaExceeded
    assert classify(400, "InvalidParameterValue", "Missing final '@domain'") is SesRejected
    assert classify(418, "", "") is SesRejected
    assert classify(302, "", "") is SesTransient
    # A skewed clock or unknown refused credentials: retried or paused, never failed.
    assert classify(403, "InvalidSignatureException", "Signature expired") is SesTransient
    assert classify(403, "SomethingNew", "") is SesPaused
    assert classify(401, "", "") is SesPaused


def test_every_5xx_is_ambiguous_unless_its_code_refused_the_call() -> None:
    for status in (500, 502, 503, 504, 599):
        assert classify(status, f"HTTP{status}", "") is SesAmbiguous
    assert classify(500, "InternalFailure", "An internal error occurred.") is SesAmbiguous
    assert classify(503, "ServiceUnavailable", "") is SesAmbiguous
    assert classify(400, "InternalFailure", "") is SesAmbiguous  # whatever the status says
    # decided at admission, before anything is sent
    assert classify(503, "TooManyRequestsException", "") is SesThrottled
    assert classify(503, "SendingPausedException", "") is SesPaused


UNVERIFIED = "Email address is not verified. The following identities failed the check in region "


def test_setup_faults_are_told_apart_from_rejected_recipients() -> None:
    rcpt = ("someone@example.org",)
    bad_name = "Configuration set name 'my set' is invalid."
    assert classify(400, "BadRequestException", bad_name, rcpt) is SesSetupFault
    for code in ("NotFoundException", "ConfigurationSetDoesNotExist"):
        assert classify(404, code, "Configuration set <x> does not exist.") is SesSetupFault
        assert setup_reason(404, code, "", rcpt) == "configuration_set"
    assert setup_reason(400, "MailFromDomainNotVerifiedException", "", rcpt) == "mail_from_domain"
    # our From identity is not verified: a setup fault
    sender_unverified = UNVERIFIED + "US-EAST-1: sender@example.com"
    assert classify(400, "MessageRejected", sender_unverified, rcpt) is SesSetupFault
    assert setup_reason(400, "MessageRejected", sender_unverified, rcpt) == "identity"
    both = UNVERIFIED + "US-EAST-1: sender@example.com, someone@example.org"
    assert classify(400, "MessageRejected", both, rcpt) is SesSetupFault
    denied = "User is not authorized to send from `sender@example.com`"
    assert classify(400, "MessageRejected", denied, rcpt) is SesSetupFault
    assert classify(400, "MessageRejected", "Email address is not verified.") is SesSetupFault
    # only the recipient is named (an account in the sandbox): permanent for that recipient
    recipient_only = UNVERIFIED + "US-EAST-1: Someone@example.org"
    assert classify(400, "MessageRejected", recipient_only, rcpt) is SesRejected
    recipient_domain = UNVERIFIED + "EU-WEST-1: example.org."
    assert classify(400, "MessageRejected", recipient_domain, rcpt) is SesRejected
    # about this message's content or address: permanent
    for content in ("Illegal address", "Message length is more than 10485760 bytes long."):
        assert classify(400, "MessageRejected", content, rcpt) is SesRejected
    # a 4xx that no SES code comes with is not SES answering, except what concerns this request
    assert classify(405, "HTTP405", "") is SesSetupFault
    assert classify(413, "HTTP413", "") is SesRejected
    assert classify(408, "HTTP408", "") is SesTransient
    assert classify(403, "HTTP403", "") is SesPaused


async def test_an_unverified_sender_identity_from_the_stub_is_a_setup_fault(
    stub: SesStub, client: SesClient, make_email: MakeEmail
) -> None:
    stub.configure(verified_identities=["example.net"])
    with pytest.raises(SesSetupFault) as raised:
        await client.send_email(make_email())
    assert raised.value.reason == "identity"
    assert "sender@example.com" in raised.value.message
    stub.configure(verified_identities=["example.com"])
    assert await client.send_email(make_email())
    stub.configure(configuration_sets=["other"])
    with pytest.raises(SesSetupFault) as raised:
        await client.send_email(make_email(configuration_set="news"))
    assert raised.value.reason == "configuration_set"
    assert stub.sent == 1


async def test_failures_before_the_request_are_never_ambiguous(
    stub: SesStub, ses_settings: Callable[..., Settings], make_email: MakeEmail
) -> None:
    """Nothing left this process: not `unknown`. Credentials that cannot be refreshed pause
    (no send can go until they are back); a message that cannot be encoded is rejected."""

    def refresh() -> dict[str, str]:
        raise RuntimeError("instance metadata unreachable")

    client = SesClient(ses_settings())
    client.credentials = RefreshableCredentials(
        access_key="AKIDOLD",
        secret_key="s",
        token="t",
        expiry_time=datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1),
        refresh_using=refresh,
        method="test",
    )
    try:
        with pytest.raises(SesPaused) as paused:
            await client.send_email(make_email())
    finally:
        await client.close()
    assert paused.value.code == "CredentialsUnavailable"
    client = SesClient(ses_settings())
    try:
        with pytest.raises(SesRejected) as rejected:
            await client.send_email(make_email(html="<p>\udcff</p>"))
    finally:
        await client.close()
    assert rejected.value.code == "InvalidMessage"
    assert stub.calls == 0


async def test_a_success_without_a_message_id_is_ambiguous(
    ses_settings: Callable[..., Settings], make_email: MakeEmail
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"MessageId": ""})

    async with serve(handler) as url:
        client = SesClient(ses_settings(SES_ENDPOINT_URL=url))
        try:
            with pytest.raises(SesAmbiguous) as raised:
                await client.send_email(make_email())
        finally:
            await client.close()
    assert raised.value.code == "MalformedResponse"


def test_boto3_failures_before_the_request_are_never_ambiguous() -> None:
    invalid = error_from_boto(ParamValidationError(report="Invalid type for parameter"))
    assert type(invalid) is SesRejected
    assert type(error_from_boto(NoCredentialsError())) is SesPaused
    assert type(error_from_boto(CredentialRetrievalError(provider="sso", error_msg="x"))) is (
        SesPaused
    )
    assert type(error_from_boto(ConnectionClosedError(endpoint_url="u"))) is SesAmbiguous
    answer = {
        "Error": {"Code": "InternalFailure", "Message": "internal"},
        "ResponseMetadata": {"HTTPStatusCode": 500},
    }
    assert type(error_from_boto(ClientError(answer, "SendEmail"))) is SesAmbiguous


async def test_close_is_idempotent_and_the_client_reopens(
    client: SesClient, make_email: MakeEmail
) -> None:
    await client.send_email(make_email())
    await client.close()
    await client.close()
    assert await client.send_email(make_email())
