"""An async SESv2 `SendEmail` / `SendBulkEmail` client for the send path: botocore's credential
chain, a lean SigV4 signer (`sender.sigv4`), one lean keep-alive HTTP/1.1 pool (`common.http1`),
msgspec JSON. boto3
costs ~4x the client CPU per call, so it stays on the control plane (`common.aws`).

The client never retries. Every failure becomes one of the `common.errors.Ses*` classes, told
apart by what the caller must do about it; above all, whether the request may have reached SES
(`SesAmbiguous`) or certainly did not (`SesTransient`), because SESv2 has no idempotency token
and a blind retry can send an email twice.

What an answer or a failure is, and why:

- `SesTransient`, certainly not sent: no connection (refused, DNS, TLS handshake, connect
  timeout, no pooled connection in time, a connection closing before the first byte); a 4xx
  auth answer (expired token or request, bad signature, skewed clock), refused before SES
  looks at the request; a 408 without an SES code.
- `SesThrottled` / `SesQuotaExceeded`: 429, `TooManyRequestsException`, `Throttling`,
  `LimitExceededException`, refused at admission.
- `SesPaused`: `SendingPaused`, `AccountSuspended`, `AccessDenied`, other 401/403: the account;
  no credentials to sign with (a failed refresh): nothing was sent.
- `SesSetupFault`, our setup and not this recipient (pause it, fail nothing): `NotFoundException`
  and `ConfigurationSetDoesNotExist`, a bad request that names the configuration set,
  `MailFromDomainNotVerified`, a `MessageRejected` that names an unverified identity other than
  the recipients or says "not authorized", a 4xx that carries no SES error code at all (a wrong
  endpoint: not SES answering).
- `SesRejected`, this message never goes: any other `MessageRejected` (content, address, a
  sandbox recipient), `BadRequestException`, `InvalidParameterValue`, other 4xx; a message that
  cannot be encoded.
- `SesAmbiguous`, SES may have sent it: **any 5xx** (SES's `InternalFailure` or
  `ServiceUnavailable`, a proxy's 502/503/504), a reset, timeout or close after the request was
  written, a 2xx without a readable MessageId.

A 2xx SendBulkEmail answer has one result per entry. `SUCCESS` with a MessageId is sent. Only a
refusal SES documents (`BulkEmailStatus`: MESSAGE_REJECTED, INVALID_PARAMETER, TEMPLATE_NOT_FOUND,
FAILED, the account's throttling, quota and pause statuses, the setup faults, and
TRANSIENT_FAILURE, "unable to process your request because of a temporary issue") without a
MessageId is "not sent", classified as the same error of a whole call; TRANSIENT_FAILURE is
`SesEntryTransient`, about that entry, not SES out of reach. An entry without a status, with one
this code does not know, or with a MessageId beside a refusal is `SesAmbiguous`: SES accepted the
call and may have sent it.

No 5xx is retried as "not sent": SES documents none as "not processed", a 500 `InternalFailure`
may come after the message was queued, and a proxy's 502/504 may have forwarded it. Only a
throttling, quota or pause code is trusted on a 5xx, as those are decided before sending.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from typing import Any

import msgspec
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.session import Session as BotocoreSession
from yarl import URL

from sesflow.common.errors import (
    ConfigError,
    SesAmbiguous,
    SesEntryTransient,
    SesError,
    SesPaused,
    SesQuotaExceeded,
    SesRejected,
    SesSetupFault,
    SesThrottled,
    SesTransient,
)
from sesflow.common.http1 import Http1Pool, MaybeSent, NotSent
from sesflow.common.settings import Settings
from sesflow.sender.sigv4 import Signer, canonical_path

SEND_PATH = "/v2/email/outbound-emails"
BULK_PATH = "/v2/email/outbound-bulk-emails"
MAX_BULK_ENTRIES = 50  # SES's limit per SendBulkEmail call
SIGNING_SERVICE = "ses"
USER_AGENT = "sesflow"
# Longest wait for a pooled or new connection; SES_TIMEOUT then bounds the answer.
MAX_CONNECT_TIMEOUT = 5.0
# Idle pooled connections are dropped after this (SES keeps them longer): reusing one the server
# is closing at that moment is the one failure no client can tell from a lost answer.
KEEPALIVE_S = 20.0


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """One attachment as SESv2 takes it (`RawContent` is base64, as the JSON protocol wants)."""

    FileName: str
    ContentType: str
    RawContent: str
    ContentDisposition: str = "ATTACHMENT"
    ContentTransferEncoding: str = "BASE64"


class OutgoingEmail(msgspec.Struct, frozen=True, kw_only=True):
    """One email to one recipient, rendered, ready for SendEmail (Simple content)."""

    from_email: str
    to: str
    subject: str
    html: str
    text: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    configuration_set: str = ""
    tenant: str = ""
    reply_to: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()


class BulkEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient of a SendBulkEmail call: their template data (JSON), headers and tags."""

    to: str
    data: str
    headers: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()


class BulkEmail(msgspec.Struct, frozen=True, kw_only=True):
    """One SendBulkEmail call: an inline template (SES syntax) and up to 50 entries."""

    from_email: str
    subject: str
    html: str
    text: str = ""
    default_data: str = "{}"
    headers: tuple[tuple[str, str], ...] = ()  # the same for every entry
    reply_to: tuple[str, ...] = ()
    configuration_set: str = ""
    tenant: str = ""
    entries: tuple[BulkEntry, ...] = ()


# --- the SESv2 wire format ---------------------------------------------------------------------


class _Text(msgspec.Struct, frozen=True):
    Data: str
    Charset: str = "UTF-8"


class _Body(msgspec.Struct, frozen=True, omit_defaults=True):
    Html: _Text
    Text: _Text | None = None


class _NameValue(msgspec.Struct, frozen=True):
    Name: str
    Value: str


class _Simple(msgspec.Struct, frozen=True, omit_defaults=True):
    Subject: _Text
    Body: _Body
    Headers: list[_NameValue] = []
    Attachments: tuple[Attachment, ...] = ()


class _Content(msgspec.Struct, frozen=True):
    Simple: _Simple


class _Destination(msgspec.Struct, frozen=True):
    ToAddresses: list[str]


class _SendEmailRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    FromEmailAddress: str
    Destination: _Destination
    Content: _Content
    ReplyToAddresses: list[str] = []
    EmailTags: list[_NameValue] = []
    ConfigurationSetName: str = ""
    TenantName: str = ""


class _SendEmailResponse(msgspec.Struct):
    MessageId: str


class _TemplateContent(msgspec.Struct, frozen=True, omit_defaults=True):
    Subject: str
    Html: str
    Text: str = ""


class _Template(msgspec.Struct, frozen=True, omit_defaults=True):
    TemplateContent: _TemplateContent
    TemplateData: str
    Headers: list[_NameValue] = []


class _BulkContent(msgspec.Struct, frozen=True):
    Template: _Template


class _ReplacementTemplate(msgspec.Struct, frozen=True):
    ReplacementTemplateData: str


class _ReplacementContent(msgspec.Struct, frozen=True):
    ReplacementTemplate: _ReplacementTemplate


class _BulkEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    Destination: _Destination
    ReplacementEmailContent: _ReplacementContent
    ReplacementHeaders: list[_NameValue] = []
    ReplacementTags: list[_NameValue] = []


class _SendBulkEmailRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    FromEmailAddress: str
    DefaultContent: _BulkContent
    BulkEmailEntries: list[_BulkEntry]
    ReplyToAddresses: list[str] = []
    ConfigurationSetName: str = ""
    TenantName: str = ""


class _EntryResult(msgspec.Struct):
    Status: str = ""
    MessageId: str = ""
    Error: str = ""


class _SendBulkEmailResponse(msgspec.Struct):
    BulkEmailEntryResults: list[_EntryResult]


class _JsonError(msgspec.Struct):
    # SESv2 uses `message`; some AWS front ends answer `Message`, `__type` or `code`.
    message: str = ""
    Message: str = ""
    type: str = msgspec.field(default="", name="__type")
    code: str = ""
    Code: str = ""


_encoder = msgspec.json.Encoder()
_response_decoder = msgspec.json.Decoder(_SendEmailResponse)
_bulk_response_decoder = msgspec.json.Decoder(_SendBulkEmailResponse)
_error_decoder = msgspec.json.Decoder(_JsonError)


def _pairs(pairs: tuple[tuple[str, str], ...]) -> list[_NameValue]:
    return [_NameValue(n, v) for n, v in pairs]


def encode_request(email: OutgoingEmail) -> bytes:
    """The JSON body of SESv2 SendEmail for `email` (Simple content: HTML and text parts,
    headers, attachments)."""
    return _encoder.encode(
        _SendEmailRequest(
            FromEmailAddress=email.from_email,
            Destination=_Destination(ToAddresses=[email.to]),
            Content=_Content(
                Simple=_Simple(
                    Subject=_Text(email.subject),
                    Body=_Body(
                        Html=_Text(email.html), Text=_Text(email.text) if email.text else None
                    ),
                    Headers=_pairs(email.headers),
                    Attachments=email.attachments,
                )
            ),
            ReplyToAddresses=list(email.reply_to),
            EmailTags=_pairs(email.tags),
            ConfigurationSetName=email.configuration_set,
            TenantName=email.tenant,
        )
    )


def encode_bulk_request(bulk: BulkEmail) -> bytes:
    """The JSON body of SESv2 SendBulkEmail for `bulk` (inline template content)."""
    return _encoder.encode(
        _SendBulkEmailRequest(
            FromEmailAddress=bulk.from_email,
            DefaultContent=_BulkContent(
                Template=_Template(
                    TemplateContent=_TemplateContent(
                        Subject=bulk.subject, Html=bulk.html, Text=bulk.text
                    ),
                    TemplateData=bulk.default_data,
                    Headers=_pairs(bulk.headers),
                )
            ),
            BulkEmailEntries=[
                _BulkEntry(
                    Destination=_Destination(ToAddresses=[entry.to]),
                    ReplacementEmailContent=_ReplacementContent(_ReplacementTemplate(entry.data)),
                    ReplacementHeaders=_pairs(entry.headers),
                    ReplacementTags=_pairs(entry.tags),
                )
                for entry in bulk.entries
            ],
            ReplyToAddresses=list(bulk.reply_to),
            ConfigurationSetName=bulk.configuration_set,
            TenantName=bulk.tenant,
        )
    )


# A bulk entry's Status -> what sesflow does about it, as for the same error of a whole call.
# Each is a refusal SES documents (BulkEmailStatus and the names its documentation gives them):
# that entry was not sent. TRANSIENT_FAILURE and FAILED say SES "was unable to process" it.
ENTRY_ERRORS: dict[str, type[SesError]] = {
    "ACCOUNT_THROTTLED": SesThrottled,
    "ACCOUNT_DAILY_QUOTA_EXCEEDED": SesQuotaExceeded,
    "SENDING_QUOTA_EXCEEDED": SesQuotaExceeded,
    "ACCOUNT_SENDING_PAUSED": SesPaused,
    "ACCOUNT_SUSPENDED": SesPaused,
    "CONFIGURATION_SET_SENDING_PAUSED": SesPaused,  # scoped to the set: `scoped_pause`
    "TRANSIENT_FAILURE": SesEntryTransient,
    "MESSAGE_REJECTED": SesRejected,
    "TEMPLATE_NOT_FOUND": SesRejected,
    "TEMPLATE_DOES_NOT_EXIST": SesRejected,
    "INVALID_PARAMETER": SesRejected,
    "INVALID_PARAMETER_VALUE": SesRejected,
    "FAILED": SesRejected,
}
# Entry statuses that blame our setup, not the recipient: that setup pauses, nothing fails.
ENTRY_SETUP_FAULTS = {
    "MAIL_FROM_DOMAIN_NOT_VERIFIED": "mail_from_domain",
    "CONFIGURATION_SET_NOT_FOUND": "configuration_set",
    "CONFIGURATION_SET_DOES_NOT_EXIST": "configuration_set",
    "INVALID_SENDING_POOL_NAME": "configuration_set",
}


def entry_outcome(result: _EntryResult, recipient: str = "") -> str | SesError:
    """SES's MessageId for an accepted entry, else the entry's error, classified like the same
    answer to a whole call: a MESSAGE_REJECTED that names our unverified identity rather than the
    recipient is a setup fault.

    SES said yes to the call, so only a documented refusal without a MessageId is "not sent". An
    entry with a MessageId but another status, an empty or unknown status, may be on its way:
    ambiguous (ON_AMBIGUOUS), never retried as unsent."""
    status = result.Status
    if status == "SUCCESS" and result.MessageId:
        return result.MessageId
    refused = status in ENTRY_ERRORS or status in ENTRY_SETUP_FAULTS
    if not refused or result.MessageId:
        detail = f"entry status {status or 'missing'!r}, MessageId {result.MessageId!r}"
        return SesAmbiguous("MalformedResponse", f"{detail}: {result.Error}".rstrip(": "), 200)
    reason = ENTRY_SETUP_FAULTS.get(status, "")
    if status == "MESSAGE_REJECTED" and identity_refused(
        result.Error, [recipient] if recipient else []
    ):
        reason = "identity"
    if reason:
        return SesSetupFault(status, result.Error, 200, reason=reason)
    # a rejected recipient fails with the same code in both modes (f:rejected:MessageRejected)
    code = "MessageRejected" if status == "MESSAGE_REJECTED" else status
    return ENTRY_ERRORS[status](code, result.Error, 200)


def bulk_outcome(outcome: str | SesError, bulk: BulkEmail) -> str | SesError:
    """An entry's outcome, a pause scoped to the call's configuration set or tenant."""
    if isinstance(outcome, str):
        return outcome
    return scoped_pause(outcome, bulk.configuration_set, bulk.tenant)


def bulk_outcomes(payload: bytes, recipients: list[str]) -> list[str | SesError]:
    """One outcome per entry of a 2xx SendBulkEmail answer. An answer we cannot read, or with the
    wrong number of results, leaves every entry ambiguous: SES said yes to the call."""
    try:
        results = _bulk_response_decoder.decode(payload).BulkEmailEntryResults
    except (msgspec.DecodeError, msgspec.ValidationError):
        results = []
    if len(results) != len(recipients):
        error = SesAmbiguous("MalformedResponse", payload[:200].decode(errors="replace"), 200)
        return [error] * len(recipients)
    return [entry_outcome(r, to) for r, to in zip(results, recipients, strict=True)]


# --- errors ------------------------------------------------------------------------------------

THROTTLE_CODES = frozenset({"TooManyRequestsException", "Throttling", "ThrottlingException"})
PAUSE_CODES = frozenset(
    {
        "SendingPausedException",
        "AccountSuspendedException",
        "AccountSendingPausedException",
        "ConfigurationSetSendingPausedException",  # scoped to the set: `scoped_pause`
        # The account or its credentials are refused as a whole: stop every sender until an
        # operator fixes it, rather than failing every queued recipient.
        "AccessDeniedException",
        "AccessDenied",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
# Not sent, and a retry may well succeed (fresh credentials, a corrected clock).
RETRY_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        # The JSON protocol's names for the same: a skewed clock ("Signature expired") or a
        # signing problem must not fail a whole campaign.
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
    }
)
# SES's own server errors: the message may have been accepted before the failure.
SERVER_FAULT_CODES = frozenset(
    {"InternalFailure", "InternalServerError", "ServiceUnavailable", "ServiceUnavailableException"}
)
# Setup faults: what every message sent with that setup would get.
CONFIGURATION_SET_CODES = frozenset(
    {"NotFoundException", "ConfigurationSetDoesNotExist", "ConfigurationSetDoesNotExistException"}
)
MAIL_FROM_CODES = frozenset({"MailFromDomainNotVerifiedException", "MailFromDomainNotVerified"})
REJECT_CODES = frozenset({"MessageRejected", "BadRequestException", "InvalidParameterValue"})
# A 4xx without an SES error code that still says something about this one request.
CODELESS_PER_REQUEST = {401: SesPaused, 403: SesPaused, 408: SesTransient, 413: SesRejected}
QUOTA_MESSAGE = "daily message quota exceeded"
RATE_MESSAGE = "maximum sending rate exceeded"

_XML_CODE = re.compile(r"<Code>\s*([^<]*?)\s*</Code>")
_XML_MESSAGE = re.compile(r"<Message>\s*([^<]*?)\s*</Message>")


def parse_error(status: int, headers: Any, body: bytes) -> tuple[str, str]:
    """(code, message) of an SES error answer: JSON (SESv2, code in `x-amzn-ErrorType` or
    `__type`) or XML (SES v1 style `<ErrorResponse><Error><Code>`)."""
    code = str(headers.get("x-amzn-ErrorType", "") or "")
    message = ""
    text = body.lstrip()[:1]
    if text == b"{":
        try:
            err = _error_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            err = _JsonError()
        message = err.message or err.Message
        code = code or err.type or err.code or err.Code
    elif text == b"<":
        decoded = body[:65536].decode("utf-8", "replace")
        if found := _XML_CODE.search(decoded):
            code = code or found.group(1)
        if found := _XML_MESSAGE.search(decoded):
            message = found.group(1)
    # `TooManyRequestsException:http://internal.amazon.com/...`, `aws.protocoltests#Name`.
    code = code.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return code or f"HTTP{status}", message


# "Email address is not verified. The following identities failed the check in region
# US-EAST-1: a@example.com, example.com"
_UNVERIFIED = re.compile(r"failed the check in region [^:]*:\s*(.*)$", re.IGNORECASE | re.DOTALL)


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def identity_refused(message: str, recipients: Collection[str] = ()) -> bool:
    """True when a MessageRejected is about our sending identity (unverified From, Sender or
    Return-Path; no sending authorization), False when it is about this message or recipient.

    SES names the identities that failed its check. When they are only the recipients (an
    account still in the sandbox, an unverified recipient) the rejection belongs to them; any
    other identity is ours. Unknown recipients or an unlisted identity count as ours: pausing
    fails nothing, failing is forever."""
    lowered = message.lower()
    if "not authorized" in lowered or "not owned" in lowered:
        return True
    if "not verified" not in lowered:
        return False
    found = _UNVERIFIED.search(message)
    if found is None or not recipients:
        return True
    listed = {i.strip().strip(".").lower() for i in found.group(1).split(",") if i.strip()}
    theirs = {r.lower() for r in recipients} | {_domain(r.lower()) for r in recipients}
    return not listed or not listed <= theirs


def setup_reason(status: int, code: str, message: str, recipients: Collection[str] = ()) -> str:
    """What part of our setup an error answer blames ("" when it blames none)."""
    if code in CONFIGURATION_SET_CODES:
        return "configuration_set"
    if code in REJECT_CODES and "configuration set" in message.lower():
        return "configuration_set"  # e.g. an invalid SES_CONFIGURATION_SET name
    if code in MAIL_FROM_CODES:
        return "mail_from_domain"
    if code == "MessageRejected" and identity_refused(message, recipients):
        return "identity"
    if code == f"HTTP{status}" and 400 <= status < 500 and status not in CODELESS_PER_REQUEST:
        return "endpoint"  # no SES error code at all: a wrong endpoint or path, not SES
    return ""


def classify(
    status: int, code: str, message: str, recipients: Collection[str] = ()
) -> type[SesError]:
    """Which Ses* class an error answer is, by what sesflow must do about it (module table).
    `recipients` of the call tell a rejected recipient from an unverified sender identity."""
    return account_outcome(status, code, message.lower()) or request_outcome(
        status, code, message, recipients
    )


def account_outcome(status: int, code: str, lowered: str) -> type[SesError] | None:
    """The answers about the account or SES itself, whatever the request: checked first."""
    if QUOTA_MESSAGE in lowered:
        return SesQuotaExceeded
    if status == 429 or code in THROTTLE_CODES or RATE_MESSAGE in lowered:
        return SesThrottled
    if code == "LimitExceededException":
        return SesQuotaExceeded if "quota" in lowered else SesThrottled
    if code in PAUSE_CODES:
        return SesPaused
    if status >= 500 or code in SERVER_FAULT_CODES:
        return SesAmbiguous
    if code in RETRY_CODES:
        return SesTransient
    return None


def request_outcome(
    status: int, code: str, message: str, recipients: Collection[str]
) -> type[SesError]:
    """The answers about this request: our setup, the message, the credentials."""
    if setup_reason(status, code, message, recipients):
        return SesSetupFault
    if code in REJECT_CODES:
        return SesRejected
    if code == f"HTTP{status}" and status in CODELESS_PER_REQUEST:
        return CODELESS_PER_REQUEST[status]
    if status in (401, 403):  # refused credentials, not this message: pause, fail nothing
        return SesPaused
    if 400 <= status < 500:
        return SesRejected
    # 1xx/3xx: not an answer SES gives to SendEmail; nothing was accepted.
    return SesTransient


def ses_error(status: int, code: str, message: str, recipients: Collection[str] = ()) -> SesError:
    """The Ses* error of an answer, a setup fault with the reason it names."""
    kind = classify(status, code, message, recipients)
    if kind is SesSetupFault:
        return SesSetupFault(
            code, message, status, reason=setup_reason(status, code, message, recipients)
        )
    return kind(code, message, status)


# Pauses SES may scope to the request's configuration set or tenant rather than the account.
# SESv2 documents only SendingPausedException ("the account's ability to send email is paused")
# and the bulk status CONFIGURATION_SET_SENDING_PAUSED; v1 says
# ConfigurationSetSendingPausedException. SESv2 has no error of its own for a paused tenant.
SCOPED_PAUSE_CODES = frozenset(
    {
        "SendingPausedException",
        "ConfigurationSetSendingPausedException",
        "ACCOUNT_SENDING_PAUSED",
        "CONFIGURATION_SET_SENDING_PAUSED",
    }
)
CONFIGURATION_SET_PAUSE_CODES = frozenset(
    {"ConfigurationSetSendingPausedException", "CONFIGURATION_SET_SENDING_PAUSED"}
)


def scoped_pause(error: SesError, configuration_set: str, tenant: str) -> SesError:
    """A pause of the request's configuration set (its code, or a message naming a configuration
    set) or, for a request with a tenant, any sending pause, as a setup fault of that set or
    tenant (`sender.setup_faults`): only the messages using it wait, the others keep the rate.
    Anything else as it is (an account pause stops every sender)."""
    if not isinstance(error, SesPaused) or error.code not in SCOPED_PAUSE_CODES:
        return error
    named = error.code in CONFIGURATION_SET_PAUSE_CODES or "configuration set" in (
        error.message.lower()
    )
    if configuration_set and named:
        reason = "configuration_set_paused"
    elif tenant:
        reason = "tenant_paused"
    else:
        return error
    return SesSetupFault(error.code, error.message, error.status, reason=reason)


def error_from_response(
    status: int, headers: Any, body: bytes, recipients: Collection[str] = ()
) -> SesError:
    code, message = parse_error(status, headers, body)
    return ses_error(status, code, message, recipients)


# --- credentials -------------------------------------------------------------------------------


def resolve_credentials(settings: Settings) -> Credentials:
    """Explicit AWS_* settings when given, else botocore's chain (env, profile, SSO, container,
    instance metadata...). The chain's credentials refresh themselves before they expire."""
    session = BotocoreSession()
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        session.set_credentials(
            settings.aws_access_key_id,
            settings.aws_secret_access_key,
            settings.aws_session_token or None,
        )
    credentials = session.get_credentials()
    if credentials is None:
        raise ConfigError("no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    return credentials


def _host_header(url: URL) -> str:
    """The Host header for `url`, as both aiohttp and botocore write it (port only when it is
    not the scheme's default)."""
    host = url.raw_host or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


def endpoint_of(settings: Settings) -> str:
    return (
        settings.ses_endpoint_url or f"https://email.{settings.aws_region}.amazonaws.com"
    ).rstrip("/")


# --- the client --------------------------------------------------------------------------------


class SesClient:
    """SESv2 SendEmail and SendBulkEmail over one keep-alive connection pool. Create and use it
    inside the event loop that sends; `close()` when done."""

    def __init__(self, settings: Settings, *, max_connections: int = 100) -> None:
        self.region = settings.aws_region
        self.url = endpoint_of(settings) + SEND_PATH
        self._url = URL(self.url)
        self.bulk_url = endpoint_of(settings) + BULK_PATH
        self._bulk_url = URL(self.bulk_url)
        if self._url.scheme not in {"http", "https"} or not self._url.raw_host:
            raise ConfigError(f"SES_ENDPOINT_URL must be an http(s) URL, not {self.url!r}")
        self.host = _host_header(self._url)
        self._path = canonical_path(self.url)
        self._bulk_path = canonical_path(self.bulk_url)
        self.credentials = resolve_credentials(settings)
        self.max_connections = max_connections
        self.connect_timeout = min(settings.ses_timeout, MAX_CONNECT_TIMEOUT)
        self.read_timeout = settings.ses_timeout
        self._pool: Http1Pool | None = None
        self._signer: Signer | None = None
        self._signer_for: ReadOnlyCredentials | None = None

    def _http(self) -> Http1Pool:
        if self._pool is None:
            self._pool = Http1Pool(
                self._url,
                limit=self.max_connections,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                keepalive=KEEPALIVE_S,
            )
        return self._pool

    async def _current_signer(self) -> Signer:
        credentials = self.credentials
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            # A refresh may call STS or instance metadata: keep it off the event loop.
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        if self._signer is None or frozen != self._signer_for:
            self._signer = Signer(frozen, SIGNING_SERVICE, self.region, self.host)
            self._signer_for = frozen
        return self._signer

    def _signed_headers(self, signer: Signer, body: bytes, url: str) -> dict[str, str]:
        # Host is the value aiohttp would send. User-Agent is never signed.
        headers = signer.headers(self._bulk_path if url == self.bulk_url else self._path, body)
        headers["User-Agent"] = USER_AGENT
        return headers

    async def _post(self, url: str, parsed: URL, body: bytes) -> tuple[int, bytes, Any]:
        try:
            headers = self._signed_headers(await self._current_signer(), body, url)
        except Exception as exc:
            # No credentials (a failed refresh from STS or instance metadata): nothing was sent,
            # and no send can be until they are back: pause, fail nothing, mark nothing unknown.
            raise SesPaused("CredentialsUnavailable", f"{type(exc).__name__}: {exc}") from exc
        try:
            answer = await self._http().post(parsed.raw_path, headers, body)
        except NotSent as exc:
            raise SesTransient(exc.code, str(exc)) from exc
        except MaybeSent as exc:
            raise SesAmbiguous(exc.code, str(exc)) from exc
        return answer.status, answer.body, answer

    async def send_bulk_email(self, bulk: BulkEmail) -> list[str | SesError]:
        """One SendBulkEmail call: per entry, SES's MessageId or that entry's error. An error of
        the whole call is raised (`common.errors.Ses*`) and concerns every entry."""
        try:
            body = encode_bulk_request(bulk)
        except (UnicodeEncodeError, msgspec.EncodeError) as exc:
            # text that is not Unicode (a lone surrogate): these messages can never be sent
            raise SesRejected("InvalidMessage", f"cannot encode the request: {exc}") from exc
        status, payload, answer_headers = await self._post(self.bulk_url, self._bulk_url, body)
        recipients = [entry.to for entry in bulk.entries]
        if 200 <= status < 300:
            outcomes = bulk_outcomes(payload, recipients)
            return [bulk_outcome(o, bulk) for o in outcomes]
        error = error_from_response(status, answer_headers, payload, recipients)
        raise scoped_pause(error, bulk.configuration_set, bulk.tenant)

    async def send_email(self, email: OutgoingEmail) -> str:
        """Send one email; returns SES's MessageId or raises a `common.errors.Ses*` error."""
        try:
            body = encode_request(email)
        except (UnicodeEncodeError, msgspec.EncodeError) as exc:
            # text that is not Unicode (a lone surrogate): this message can never be sent
            raise SesRejected("InvalidMessage", f"cannot encode the request: {exc}") from exc
        status, payload, answer_headers = await self._post(self.url, self._url, body)
        if 200 <= status < 300:
            try:
                message_id = _response_decoder.decode(payload).MessageId
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # SES said yes but the id is unreadable: the mail is probably on its way.
                raise SesAmbiguous(
                    "MalformedResponse", payload[:200].decode(errors="replace"), status
                ) from exc
            if not message_id:
                raise SesAmbiguous("MalformedResponse", "no MessageId in the answer", status)
            return message_id
        error = error_from_response(status, answer_headers, payload, (email.to,))
        raise scoped_pause(error, email.configuration_set, email.tenant)

    async def close(self) -> None:
        """Close the pool; calling it twice is harmless."""
        if self._pool is not None:
            await self._pool.close()
        self._pool = None
