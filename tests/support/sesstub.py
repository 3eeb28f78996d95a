"""A local SES endpoint for tests, fault runs and benchmarks: an aiohttp server that speaks the
SESv2 calls sesflow uses, with SES's answer and error shapes, and knobs to make it slow, throttle,
pause or reject. It does not check signatures.

    SendEmail       POST /v2/email/outbound-emails
    SendBulkEmail   POST /v2/email/outbound-bulk-emails
    GetAccount      GET  /v2/email/account
    setup reads     GetEmailIdentity, GetConfigurationSet[EventDestinations]: `sesstub_setup`
    List/Put/Delete/GetSuppressedDestination  /v2/email/suppression/addresses[/{address}]
                    the account-level suppression list (`support.sesstub_suppressions`;
                    its own control: POST /stub/suppressions)
    control         POST /stub/control   JSON of any `StubConfig` field, plus "reset": true
    stats           GET  /stub/stats     (?recipients=1 adds the per-address counts and the
                                          time each address was first accepted)
    recent calls    GET  /stub/messages  the last `keep_messages` accepted requests
    mail            GET  /stub/mail      per recipient, the mails they would have received

SendBulkEmail and SendEmail with Template content render an inline template the way SES does
(`common.handlebars`: `{{x}}` HTML-escaped in every part, `{{{x}}}` raw, `\\{{` literal), with the
entry's data over the default data, the entry's headers and tags over the default ones. Every
accepted recipient's mail is kept in `mail[address]` (`Mail`: subject, html, text, headers,
reply-to, tags, attachments), so tests assert on what each recipient would get.
`entry_statuses[address]` is a list of bulk entry statuses (`MESSAGE_REJECTED`,
`ACCOUNT_THROTTLED`...) answered for that address's next entries, one per entry.

In process:  `async with SesStub(latency_ms=20, rate=200) as stub: ... stub.url ...`
As a process: `python -m support.sesstub --port 0 --rate 200` (from `tests/`, or through
`support.stubprocess.StubProcess`) prints its URL on one line when ready.

Quotas count recipients, as SES does. `rate` is enforced with a token bucket of `burst` tokens
(default a tenth of a second of tokens, at least 1): a call that finds too few tokens for all its
recipients is answered 429 TooManyRequestsException and counted in `throttled`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import itertools
import random
import re
import signal
import sys
import time
import uuid
from typing import Any

import msgspec
from aiohttp import web

from sesflow.common.handlebars import render

from support.sesstub_setup import SetupState
from support.sesstub_suppressions import AccountSuppressionList

ACCOUNT_PATH = "/v2/email/account"
SEND_PATH = "/v2/email/outbound-emails"
BULK_PATH = "/v2/email/outbound-bulk-emails"

_ERROR_MESSAGES = {
    "NotFoundException": "The resource you attempted to access doesn't exist.",
    "TooManyRequestsException": "Maximum sending rate exceeded.",
    "LimitExceededException": "Daily message quota exceeded.",
    "SendingPausedException": "Sending is paused for this account.",
    "MessageRejected": "Email address is on the account-level suppression list.",
    "BadRequestException": "Missing required parameter.",
    "InternalFailure": "An internal error occurred.",
    "ServiceUnavailable": "Service is unavailable, please try again later.",
}
_STATUS_CODES = {
    429: "TooManyRequestsException",
    400: "BadRequestException",
    403: "AccessDeniedException",
    404: "NotFoundException",
    500: "InternalFailure",
    502: "InternalFailure",
    503: "ServiceUnavailable",
    504: "InternalFailure",
}


class StubConfig(msgspec.Struct, kw_only=True):
    """Every knob; each can be changed at runtime through POST /stub/control."""

    latency_ms: float = 0.0
    error_rate: float = 0.0  # fraction of send calls answered with `error_status`
    error_status: int = 429
    error_code: str = ""  # default: derived from error_status
    disconnect_rate: float = 0.0  # fraction of send calls dropped without an answer
    rate: float = 0.0  # enforced recipients per second; 0 = unlimited
    burst: float = 0.0  # token bucket size; 0 = max(1, rate / 10)
    max_24h: float = -1.0  # daily quota in recipients, -1 = unlimited (GetAccount too)
    # GetAccount's MaxSendRate when no `rate` is enforced (a sender adopts it as its ceiling)
    max_send_rate: float = 14.0
    reject_pattern: str = ""  # regex; matching recipients get MessageRejected
    # regex; a call naming a matching recipient is refused as a whole, 400 BadRequestException
    # (SendBulkEmail too: one bad entry refuses every entry of its call)
    bad_address_pattern: str = ""
    paused_until: float = 0.0  # epoch seconds; SendingPausedException until then
    keep_messages: int = 1000  # accepted requests kept for GET /stub/messages
    keep_mail: bool = True  # keep (and render) every recipient's mail in `mail`
    # address -> statuses for its next bulk entries (consumed one per entry), e.g.
    # {"a@x.org": ["ACCOUNT_THROTTLED"]}: that entry is answered so, the others as usual
    entry_statuses: dict[str, list[str]] = {}
    # Setup checks, as SES makes them: empty = anything goes. A From address outside
    # `verified_identities` (address or domain) gets MessageRejected "Email address is not
    # verified"; a ConfigurationSetName outside `configuration_sets` gets NotFoundException.
    verified_identities: list[str] = []
    configuration_sets: list[str] = []
    # Paused configuration sets and tenants: a call naming one is refused, the others go on.
    # SendEmail: ConfigurationSetSendingPausedException / SendingPausedException (400);
    # SendBulkEmail: every entry CONFIGURATION_SET_SENDING_PAUSED / the call SendingPaused.
    paused_configuration_sets: list[str] = []
    paused_tenants: list[str] = []
    # Answer every accepted send with this status after recording it as sent (a proxy's 502
    # after forwarding, an SES 500 after queueing); 0 = answer 200.
    accepted_error_status: int = 0


class Control(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    latency_ms: float | None = None
    error_rate: float | None = None
    error_status: int | None = None
    error_code: str | None = None
    disconnect_rate: float | None = None
    rate: float | None = None
    burst: float | None = None
    max_24h: float | None = None
    max_send_rate: float | None = None
    reject_pattern: str | None = None
    bad_address_pattern: str | None = None
    pause_seconds: float | None = None  # pause the account for N seconds (0 = resume)
    keep_messages: int | None = None
    entry_statuses: dict[str, list[str]] | None = None
    keep_mail: bool | None = None
    verified_identities: list[str] | None = None
    configuration_sets: list[str] | None = None
    paused_configuration_sets: list[str] | None = None
    paused_tenants: list[str] | None = None
    accepted_error_status: int | None = None
    reset: bool = False  # forget every count (not the configuration)


class _Destination(msgspec.Struct):
    ToAddresses: list[str] = []
    CcAddresses: list[str] = []
    BccAddresses: list[str] = []

    def all(self) -> list[str]:
        return [*self.ToAddresses, *self.CcAddresses, *self.BccAddresses]


class _NameValue(msgspec.Struct):
    Name: str
    Value: str


class _Text(msgspec.Struct):
    Data: str
    Charset: str = "UTF-8"


class _Body(msgspec.Struct):
    Html: _Text | None = None
    Text: _Text | None = None


class _Attachment(msgspec.Struct):
    FileName: str
    RawContent: str  # base64
    ContentType: str = "application/octet-stream"


class _Simple(msgspec.Struct):
    Subject: _Text
    Body: _Body
    Headers: list[_NameValue] = []
    Attachments: list[_Attachment] = []


class _TemplateContent(msgspec.Struct):
    Subject: str = ""
    Html: str = ""
    Text: str = ""


class _Template(msgspec.Struct):
    TemplateContent: _TemplateContent | None = None
    TemplateName: str = ""
    TemplateData: str = "{}"
    Headers: list[_NameValue] = []
    Attachments: list[_Attachment] = []


class _Content(msgspec.Struct):
    Simple: _Simple | None = None
    Template: _Template | None = None
    Raw: dict[str, Any] | None = None


class _SendEmail(msgspec.Struct):
    Destination: _Destination
    Content: _Content
    FromEmailAddress: str = ""
    ReplyToAddresses: list[str] = []
    EmailTags: list[_NameValue] = []
    ConfigurationSetName: str = ""
    TenantName: str = ""


class _ReplacementTemplate(msgspec.Struct):
    ReplacementTemplateData: str = "{}"


class _ReplacementContent(msgspec.Struct):
    ReplacementTemplate: _ReplacementTemplate | None = None


class _BulkEntry(msgspec.Struct):
    Destination: _Destination
    ReplacementEmailContent: _ReplacementContent | None = None
    ReplacementHeaders: list[_NameValue] = []
    ReplacementTags: list[_NameValue] = []


class _BulkContent(msgspec.Struct):
    Template: _Template


class _SendBulkEmail(msgspec.Struct):
    BulkEmailEntries: list[_BulkEntry]
    DefaultContent: _BulkContent
    FromEmailAddress: str = ""
    ReplyToAddresses: list[str] = []
    DefaultEmailTags: list[_NameValue] = []
    ConfigurationSetName: str = ""
    TenantName: str = ""


class Mail(msgspec.Struct, kw_only=True):
    """What one recipient would receive."""

    message_id: str
    from_email: str
    to: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    reply_to: list[str]
    tags: dict[str, str]
    attachments: list[tuple[str, str, bytes]]  # (filename, content type, content)
    bulk: bool  # from a SendBulkEmail call


def _merged(default: list[_NameValue], replacement: list[_NameValue]) -> dict[str, str]:
    """SES's rule for headers and tags: the entry's value wins for a name in both."""
    out = {h.Name: h.Value for h in default}
    out.update({h.Name: h.Value for h in replacement})
    return out


def _attachments(items: list[_Attachment]) -> list[tuple[str, str, bytes]]:
    return [(a.FileName, a.ContentType, base64.b64decode(a.RawContent)) for a in items]


def _template_data(raw: str) -> dict[str, Any]:
    try:
        data = _raw_decoder.decode(raw or "{}")
    except msgspec.DecodeError as exc:
        raise SesError(400, "BadRequestException", f"Invalid template data: {exc}") from exc
    if not isinstance(data, dict):
        raise SesError(400, "BadRequestException", "Template data must be a JSON object")
    return data


_encoder = msgspec.json.Encoder()
_send_decoder = msgspec.json.Decoder(_SendEmail)
_bulk_decoder = msgspec.json.Decoder(_SendBulkEmail)
_control_decoder = msgspec.json.Decoder(Control)
_raw_decoder = msgspec.json.Decoder()


class SesError(Exception):
    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.message = message or _ERROR_MESSAGES.get(code, code)


class SesStub:
    """The stub server. Counters are plain attributes, readable from the test that owns it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.host = host
        self.port = port
        self.config = msgspec.convert(config, StubConfig)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._reject: re.Pattern[str] | None = None
        self.setup = SetupState()  # identities, configuration sets, the account's standing
        # kept across `reset()`: it is the account's data, like the configuration
        self.suppression_list = AccountSuppressionList()
        self.reset()
        self._apply_pattern()

    # --- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        self.started = time.time()
        self.calls = 0  # every SES call received
        self.messages = 0  # accepted SendEmail calls (+ accepted bulk entries)
        self.sent = 0  # accepted recipients
        self.throttled = 0  # 429 answers from the enforced rate
        self.injected_errors = 0  # answers from error_rate
        self.disconnects = 0
        self.rejected = 0  # recipients refused by reject_pattern
        self.paused_answers = 0
        self.quota_answers = 0
        self.bad_requests = 0
        self.bulk_calls = 0  # SendBulkEmail calls received
        self.setup_faults = 0  # calls refused by verified_identities / configuration_sets
        self.setup_paused = 0  # calls refused by paused_configuration_sets / paused_tenants
        self.mail: collections.defaultdict[str, list[Mail]] = collections.defaultdict(list)
        self.recipients: collections.Counter[str] = collections.Counter()
        # epoch seconds each recipient was first accepted (when its call arrived)
        self.received_at: dict[str, float] = {}
        self.per_second: collections.Counter[int] = collections.Counter()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=max(0, self.config.keep_messages)
        )
        self._tokens = self._bucket_size()
        self._refilled = time.monotonic()

    def _bucket_size(self) -> float:
        return self.config.burst or max(1.0, self.config.rate / 10)

    def _apply_pattern(self) -> None:
        pattern = self.config.reject_pattern
        self._reject = re.compile(pattern, re.IGNORECASE) if pattern else None

    def configure(self, **changes: Any) -> StubConfig:
        """Change knobs at runtime (same names as POST /stub/control)."""
        control = msgspec.convert(changes, Control)
        return self._control(control)

    def _control(self, control: Control) -> StubConfig:
        if control.reset:
            self.reset()
        for field in StubConfig.__struct_fields__:
            value = getattr(control, field, None)
            if value is not None:
                setattr(self.config, field, value)
        if control.pause_seconds is not None:
            self.config.paused_until = (
                time.time() + control.pause_seconds if control.pause_seconds > 0 else 0.0
            )
        if control.rate is not None or control.burst is not None:
            self._tokens = self._bucket_size()
            self._refilled = time.monotonic()
        if control.keep_messages is not None:
            self.recent = collections.deque(self.recent, maxlen=max(0, control.keep_messages))
        self._apply_pattern()
        return self.config

    def stats(self, with_recipients: bool = False) -> dict[str, Any]:
        duplicates = sum(1 for count in self.recipients.values() if count > 1)
        data: dict[str, Any] = {
            "calls": self.calls,
            "messages": self.messages,
            "sent": self.sent,
            "unique_recipients": len(self.recipients),
            "duplicate_recipients": duplicates,
            "throttled": self.throttled,
            "injected_errors": self.injected_errors,
            "disconnects": self.disconnects,
            "rejected": self.rejected,
            "paused_answers": self.paused_answers,
            "quota_answers": self.quota_answers,
            "bad_requests": self.bad_requests,
            "bulk_calls": self.bulk_calls,
            "setup_faults": self.setup_faults,
            "setup_paused": self.setup_paused,
            "max_per_second": max(self.per_second.values(), default=0),
            "per_second": {str(k): v for k, v in sorted(self.per_second.items())},
            "config": msgspec.to_builtins(self.config),
        }
        if with_recipients:
            data["recipients"] = dict(self.recipients)
            data["received_at"] = self.received_at
        return data

    # --- SES behaviour -------------------------------------------------------------------------

    def _take(self, count: int) -> bool:
        """Token bucket over recipients; False (nothing taken) when there are too few."""
        if self.config.rate <= 0:
            return True
        now = time.monotonic()
        size = self._bucket_size()
        self._tokens = min(size, self._tokens + (now - self._refilled) * self.config.rate)
        self._refilled = now
        if self._tokens + 1e-9 < count:
            return False
        self._tokens -= count
        return True

    def _admit(self, recipients: int) -> None:
        """Account-level checks every send call passes through, in SES's order."""
        config = self.config
        if config.paused_until and time.time() < config.paused_until:
            self.paused_answers += 1
            raise SesError(400, "SendingPausedException")
        if config.error_rate > 0 and random.random() < config.error_rate:
            self.injected_errors += 1
            status = config.error_status
            raise SesError(
                status, config.error_code or _STATUS_CODES.get(status, "InternalFailure")
            )
        if 0 <= config.max_24h < self.sent + recipients:
            self.quota_answers += 1
            raise SesError(400, "LimitExceededException")
        if not self._take(recipients):
            self.throttled += 1
            raise SesError(429, "TooManyRequestsException")

    def _check_setup(self, from_address: str, configuration_set: str) -> None:
        """The checks SES makes of the account's setup, before any rate or quota."""
        config = self.config
        known = config.configuration_sets
        if known and configuration_set and configuration_set not in known:
            self.setup_faults += 1
            message = f"Configuration set <{configuration_set}> does not exist."
            raise SesError(404, "NotFoundException", message)
        address = from_address.rpartition("<")[2].rstrip(">").strip().lower()
        verified = {i.lower() for i in config.verified_identities}
        if verified and not {address, address.rpartition("@")[2]} & verified:
            self.setup_faults += 1
            raise SesError(
                400,
                "MessageRejected",
                "Email address is not verified. The following identities failed the check in "
                f"region US-EAST-1: {address}",
            )

    def _check_paused(self, configuration_set: str, tenant: str, bulk: bool) -> bool:
        """A paused tenant refuses the call; a paused configuration set too (SendEmail), or
        answers True: each entry of the SendBulkEmail call gets CONFIGURATION_SET_SENDING_PAUSED."""
        if tenant and tenant in self.config.paused_tenants:
            self.setup_paused += 1
            raise SesError(400, "SendingPausedException", f"Sending is paused for tenant {tenant}.")
        if configuration_set not in self.config.paused_configuration_sets:
            return False
        self.setup_paused += 1
        if bulk:
            return True
        raise SesError(
            400,
            "ConfigurationSetSendingPausedException",
            f"Sending is paused for configuration set {configuration_set}.",
        )

    def _check_addresses(self, recipients: list[str]) -> None:
        pattern = self.config.bad_address_pattern
        for address in recipients if pattern else ():
            if re.search(pattern, address, re.IGNORECASE):
                self.bad_requests += 1
                raise SesError(400, "BadRequestException", f"Invalid email address: {address}")

    def _rejects(self, address: str) -> bool:
        return self._reject is not None and self._reject.search(address) is not None

    def _message_id(self) -> str:
        return f"0100{int(time.time() * 1000):012x}-{uuid.uuid4()}-{next(self._ids):06d}"

    def _record(self, recipients: list[str]) -> None:
        now = time.time()
        self.sent += len(recipients)
        self.per_second[int(now)] += len(recipients)
        self.recipients.update(recipients)
        for address in recipients:
            self.received_at.setdefault(address, now)

    async def _delay(self) -> None:
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)

    def _maybe_disconnect(self, request: web.Request) -> bool:
        if self.config.disconnect_rate > 0 and random.random() < self.config.disconnect_rate:
            self.disconnects += 1
            if request.transport is not None:
                request.transport.close()
            return True
        return False

    def _keep(self, mail: Mail) -> None:
        self.mail[mail.to].append(mail)

    def _simple_mail(self, call: _SendEmail, to: str, message_id: str) -> Mail:
        content = call.Content
        tags = {t.Name: t.Value for t in call.EmailTags}
        if content.Template is not None:
            template = content.Template
            data = _template_data(template.TemplateData)
            parts = template.TemplateContent or _TemplateContent()
            return Mail(
                message_id=message_id,
                from_email=call.FromEmailAddress,
                to=to,
                subject=render(parts.Subject, data),
                html=render(parts.Html, data),
                text=render(parts.Text, data),
                headers=_merged(template.Headers, []),
                reply_to=call.ReplyToAddresses,
                tags=tags,
                attachments=_attachments(template.Attachments),
                bulk=False,
            )
        simple = content.Simple
        body = simple.Body if simple is not None else _Body()
        return Mail(
            message_id=message_id,
            from_email=call.FromEmailAddress,
            to=to,
            subject=simple.Subject.Data if simple is not None else "",
            html=body.Html.Data if body.Html else "",
            text=body.Text.Data if body.Text else "",
            headers=_merged(simple.Headers if simple else [], []),
            reply_to=call.ReplyToAddresses,
            tags=tags,
            attachments=_attachments(simple.Attachments if simple else []),
            bulk=False,
        )

    async def send_email(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = await request.read()
        await self._delay()
        try:
            try:
                call = _send_decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.bad_requests += 1
                raise SesError(400, "BadRequestException", f"Invalid request: {exc}") from exc
            recipients = call.Destination.all()
            if not call.FromEmailAddress or not recipients:
                self.bad_requests += 1
                raise SesError(400, "BadRequestException", "Missing FromEmailAddress or recipient")
            if len(recipients) > 50:
                self.bad_requests += 1
                raise SesError(400, "BadRequestException", "Too many recipients (max 50).")
            self._check_addresses(recipients)
            self._check_setup(call.FromEmailAddress, call.ConfigurationSetName)
            self._check_paused(call.ConfigurationSetName, call.TenantName, bulk=False)
            if self._maybe_disconnect(request):
                return web.Response(status=500)
            self._admit(len(recipients))
            refused = [r for r in recipients if self._rejects(r)]
            if refused:
                self.rejected += len(refused)
                raise SesError(400, "MessageRejected", f"Address rejected: {refused[0]}")
            message_id = self._message_id()
            mails = (
                [self._simple_mail(call, to, message_id) for to in recipients]
                if self.config.keep_mail
                else []
            )
        except SesError as err:
            return self._error(err)
        self.messages += 1
        self._record(recipients)
        for mail in mails:
            self._keep(mail)
        if self.recent.maxlen:
            self.recent.append(_raw_decoder.decode(body))
        if self.config.accepted_error_status:
            code = self.config.accepted_error_status
            return web.Response(status=code, text="<html>Bad gateway</html>")
        return self._json({"MessageId": message_id})

    def _entry_status(self, recipients: list[str]) -> str:
        for address in recipients:
            queued = self.config.entry_statuses.get(address)
            if queued:
                return queued.pop(0)
        if any(self._rejects(r) for r in recipients):
            return "MESSAGE_REJECTED"
        return "SUCCESS"

    def _bulk_call(self, body: bytes) -> _SendBulkEmail:
        """The SendBulkEmail request, or SesError (400) as SES answers a malformed one."""
        try:
            call = _bulk_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.bad_requests += 1
            raise SesError(400, "BadRequestException", f"Invalid request: {exc}") from exc
        if not call.FromEmailAddress or not call.BulkEmailEntries:
            self.bad_requests += 1
            raise SesError(400, "BadRequestException", "Missing FromEmailAddress or entries")
        if len(call.BulkEmailEntries) > 50:
            self.bad_requests += 1
            raise SesError(400, "BadRequestException", "Too many entries (max 50).")
        return call

    async def send_bulk_email(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.bulk_calls += 1
        body = await request.read()
        await self._delay()
        try:
            call = self._bulk_call(body)
            self._check_addresses([r for e in call.BulkEmailEntries for r in e.Destination.all()])
            self._check_setup(call.FromEmailAddress, call.ConfigurationSetName)
            set_paused = self._check_paused(call.ConfigurationSetName, call.TenantName, bulk=True)
            template = call.DefaultContent.Template
            default_data = _template_data(template.TemplateData)
            entry_data = [
                _template_data(
                    e.ReplacementEmailContent.ReplacementTemplate.ReplacementTemplateData
                    if e.ReplacementEmailContent and e.ReplacementEmailContent.ReplacementTemplate
                    else "{}"
                )
                for e in call.BulkEmailEntries
            ]
            if self._maybe_disconnect(request):
                return web.Response(status=500)
            if not set_paused:  # refused entries take no rate
                self._admit(sum(len(e.Destination.all()) for e in call.BulkEmailEntries))
        except SesError as err:
            return self._error(err)
        # a stored template (TemplateName) is not kept here: its mail renders empty
        parts = template.TemplateContent or _TemplateContent()
        results: list[dict[str, str]] = []
        for entry, own in zip(call.BulkEmailEntries, entry_data, strict=True):
            recipients = entry.Destination.all()
            status = "CONFIGURATION_SET_SENDING_PAUSED" if set_paused else ""
            status = status or self._entry_status(recipients)
            if status != "SUCCESS":
                if status == "MESSAGE_REJECTED":
                    self.rejected += len(recipients)
                results.append({"Status": status, "Error": f"{status}: {recipients[0]}"})
                continue
            data = {**default_data, **own}
            message_id = self._message_id()
            for to in recipients if self.config.keep_mail else ():
                self._keep(
                    Mail(
                        message_id=message_id,
                        from_email=call.FromEmailAddress,
                        to=to,
                        subject=render(parts.Subject, data),
                        html=render(parts.Html, data),
                        text=render(parts.Text, data),
                        headers=_merged(template.Headers, entry.ReplacementHeaders),
                        reply_to=call.ReplyToAddresses,
                        tags=_merged(call.DefaultEmailTags, entry.ReplacementTags),
                        attachments=_attachments(template.Attachments),
                        bulk=True,
                    )
                )
            self.messages += 1
            self._record(recipients)
            results.append({"Status": "SUCCESS", "MessageId": message_id})
        if self.recent.maxlen:
            self.recent.append(_raw_decoder.decode(body))
        if self.config.accepted_error_status:
            code = self.config.accepted_error_status
            return web.Response(status=code, text="<html>Bad gateway</html>")
        return self._json({"BulkEmailEntryResults": results})

    async def get_account(self, request: web.Request) -> web.StreamResponse:
        config = self.config
        paused = bool(config.paused_until and time.time() < config.paused_until)
        standing = self.setup.account_fields()
        return self._json(
            {
                "DedicatedIpAutoWarmupEnabled": False,
                **standing,
                "SendQuota": {
                    "Max24HourSend": config.max_24h,
                    "MaxSendRate": config.rate or config.max_send_rate,
                    "SentLast24Hours": float(self.sent),
                },
                "SendingEnabled": standing["SendingEnabled"] and not paused,
            }
        )

    # --- control -------------------------------------------------------------------------------

    async def control(self, request: web.Request) -> web.StreamResponse:
        try:
            control = _control_decoder.decode(await request.read() or b"{}")
            if control.reject_pattern:
                re.compile(control.reject_pattern)
        except (msgspec.DecodeError, msgspec.ValidationError, re.error) as exc:
            return web.json_response({"error": "bad_control", "detail": str(exc)}, status=400)
        return web.Response(
            body=_encoder.encode(self._control(control)), content_type="application/json"
        )

    async def stats_handler(self, request: web.Request) -> web.StreamResponse:
        with_recipients = request.query.get("recipients", "") in {"1", "true", "yes"}
        return web.Response(
            body=_encoder.encode(self.stats(with_recipients)), content_type="application/json"
        )

    async def mail_handler(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=_encoder.encode({to: mails for to, mails in self.mail.items()}),
            content_type="application/json",
        )

    async def messages_handler(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=_encoder.encode(list(self.recent)), content_type="application/json"
        )

    # --- HTTP ----------------------------------------------------------------------------------

    @staticmethod
    def _headers() -> dict[str, str]:
        return {"x-amzn-RequestId": str(uuid.uuid4())}

    def _json(self, data: Any) -> web.Response:
        return web.Response(
            body=_encoder.encode(data), content_type="application/json", headers=self._headers()
        )

    def _error(self, err: SesError) -> web.Response:
        headers = self._headers()
        headers["x-amzn-ErrorType"] = f"{err.code}:http://internal.amazon.com/coral/com.amazon.ses/"
        return web.Response(
            status=err.status,
            body=_encoder.encode({"message": err.message}),
            content_type="application/json",
            headers=headers,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post(SEND_PATH, self.send_email)
        app.router.add_post(BULK_PATH, self.send_bulk_email)
        app.router.add_get(ACCOUNT_PATH, self.get_account)
        app.router.add_post("/stub/control", self.control)
        app.router.add_get("/stub/stats", self.stats_handler)
        app.router.add_get("/stub/messages", self.messages_handler)
        app.router.add_get("/stub/mail", self.mail_handler)
        self.setup.add_routes(app)
        self.suppression_list.add_routes(app)
        return app

    async def start(self) -> SesStub:
        # In-flight calls (a long latency setting) get one second to finish at shutdown.
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> SesStub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """The command line; a stub that extends this one adds its own arguments to it."""
    parser = argparse.ArgumentParser(description="Local SESv2 stub (no signature checks).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=429)
    parser.add_argument("--disconnect-rate", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=0.0, help="enforced recipients/s, 0 = none")
    parser.add_argument("--burst", type=float, default=0.0)
    parser.add_argument("--max-24h", type=float, default=-1.0)
    parser.add_argument("--max-send-rate", type=float, default=14.0)
    parser.add_argument("--reject-pattern", default="")
    parser.add_argument("--pause-seconds", type=float, default=0.0)
    parser.add_argument("--keep-messages", type=int, default=1000)
    parser.add_argument("--keep-mail", type=_flag, default=True)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `StubConfig` knobs the command line sets."""
    return {
        "latency_ms": args.latency_ms,
        "error_rate": args.error_rate,
        "error_status": args.error_status,
        "disconnect_rate": args.disconnect_rate,
        "rate": args.rate,
        "burst": args.burst,
        "max_24h": args.max_24h,
        "max_send_rate": args.max_send_rate,
        "reject_pattern": args.reject_pattern,
        "keep_messages": args.keep_messages,
        "keep_mail": args.keep_mail,
    }


async def serve(stub: SesStub, args: argparse.Namespace) -> None:
    """Run `stub` until SIGTERM or SIGINT, printing its URL on one line once it listens."""
    if args.pause_seconds > 0:
        stub.configure(pause_seconds=args.pause_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with stub:
        print(stub.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    asyncio.run(serve(SesStub(args.host, args.port, **config_from_args(args)), args))


if __name__ == "__main__":
    main(sys.argv[1:])
