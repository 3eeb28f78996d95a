"""The one validation of a message, shared by the HTTP handler and the dispatcher.

Two entry points feed it:

* `parse_api_body` reads a `POST /v1/messages` body in either older service's shape and returns one
  `MessageRequest` per element of `messages[]`:
    - Rust: `{"messages": [{"topic_id", "emails", "subject", "content"}], "scheduled_at": ...}`
    - Go:   `{"messages": [{"topicId", "emails", "subject", "content", "scheduledAt"}]}`
  `planId` / `plan_id` name the topic too; a per-message `scheduled_at` / `scheduledAt` wins over
  the top-level one. Optional per message: `list` (`common.mailing_lists`), `track_opens`,
  `track_clicks`, `unsubscribe`,
  `from_email` (or their camelCase spellings).
* the dispatcher decodes an entry of `requests` with `common.schema.decode_request`.

Both then call `validate_message` (after `ingest.templates` copied in the stored template a
message names), which checks the topic, subject, content, sizes, schedule, every address, the
merge data and placeholders (`ingest.merge_data`), reply-to, headers (`ingest.custom_headers`)
and attachments (`ingest.attachments`), fills in the text part (`ingest.text_part`), and returns
the message normalised (addresses trimmed, duplicates dropped keeping the first, schedule
rewritten as RFC 3339 UTC, every recipient listed in `recipients` when any came that way).

Addresses go to SES in ASCII (`common.addresses.ascii_address`): a non-ASCII domain is converted
to punycode, and that converted spelling is what the message keeps (and what duplicates are
compared on); a non-ASCII local part is invalid, and the error says so.

Policy for invalid addresses:

* a message whose every address is invalid (or that has none) is rejected as a whole;
* the API (`strict=True`) rejects the whole request with 400, listing the bad addresses, and
  writes nothing: the caller is there to fix it;
* the dispatcher (`strict=False`, entries XADDed by producers, nobody to answer) keeps the valid
  addresses and reports the invalid ones, which it records as one `rejected` event.

Duplicates (compared case-insensitively) are never an error: the first entry is kept, spelling
and data; `recipients` are read before `emails`. Anything else that is invalid (data, a
placeholder some kept recipient cannot fill, headers, attachments...) rejects the whole message
in both modes: sending part of a personalised message, or an altered one, is never what was meant.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from sesflow.common.addresses import (
    InvalidAddress,
    InvalidMailbox,
    ascii_address,
    normalise_mailbox,
)
from sesflow.common.errors import InputError
from sesflow.common.http import decode_json
from sesflow.common.keys import RESERVED_TOPICS
from sesflow.common.mailing_lists import list_of
from sesflow.common.schema import LANES, Attachment, MessageRequest, Recipient
from sesflow.common.ses_setup import SesSetupPolicy
from sesflow.common.settings import Settings
from sesflow.ingest.attachments import check_attachments, message_bytes
from sesflow.ingest.custom_headers import check_headers
from sesflow.ingest.merge_data import (
    LINE_BREAKS,
    check_data,
    check_placeholder_names,
    check_resolves,
    check_subject_values,
)
from sesflow.ingest.text_part import html_to_text

MAX_TOPIC_CHARS = 200
MAX_LISTED_ERRORS = 20
MAX_REPLY_TO = 10
LATEST_SCHEDULE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

_SCHEDULE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})?"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


NO_SES_SETUP = SesSetupPolicy()  # no configuration set or tenant may be named


@dataclass(frozen=True, slots=True)
class Limits:
    max_recipients: int
    max_subject_bytes: int
    max_content_bytes: int
    max_data_bytes: int = 16 * 1024
    max_message_bytes: int = 40 * 1024 * 1024
    # Per POST: one request is one transaction and one idempotency record.
    max_messages: int = 1000
    max_request_recipients: int = 100_000
    ses_setup: SesSetupPolicy = NO_SES_SETUP

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_recipients=settings.max_recipients,
            max_subject_bytes=settings.max_subject_bytes,
            max_content_bytes=settings.max_content_bytes,
            max_data_bytes=settings.max_data_bytes,
            max_message_bytes=settings.max_message_bytes,
            max_messages=settings.max_messages_per_request,
            max_request_recipients=settings.max_recipients_per_request,
            ses_setup=SesSetupPolicy.from_values(
                settings.ses_configuration_set,
                settings.ses_configuration_sets,
                settings.ses_tenants,
                settings.ses_tenant_identities,
                settings.email_sender,
            ),
        )


@dataclass(frozen=True, slots=True)
class ValidMessage:
    """A message that passed validation, normalised; `invalid` lists the addresses dropped
    (always empty in strict mode) and `duplicates` how many repeated addresses were dropped.

    `emails` are the recipients kept, in order (the job index is the position), `own_data` each
    one's own merge data as compact JSON ("" when none). The other fields are the content-hash
    forms of the message's parts (see `common.schema.MessageContent`)."""

    request: MessageRequest
    due_ms: int | None
    invalid: list[str] = field(default_factory=list)
    invalid_detail: str = ""  # `invalid` listed for an event's detail, with why (see Addresses)
    duplicates: int = 0
    emails: list[str] = field(default_factory=list)
    own_data: list[str] = field(default_factory=list)
    data: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    attachments: str = ""

    @property
    def count(self) -> int:
        return len(self.emails)


def parse_schedule(value: str | None) -> int | None:
    """Epoch ms of a schedule, or None for "now". Accepts RFC 3339 and "YYYY-MM-DD HH:MM:SS";
    a time without an offset is UTC."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not _SCHEDULE.fullmatch(text):
        raise InputError(
            "invalid_schedule",
            f"scheduled_at {text[:64]!r} is not RFC 3339 or 'YYYY-MM-DD HH:MM:SS'",
        )
    try:
        moment = datetime.fromisoformat(text.replace("t", "T").replace("z", "Z"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        due_ms = int(moment.timestamp() * 1000)
    except (ValueError, OverflowError, OSError) as exc:
        raise InputError("invalid_schedule", f"scheduled_at {text!r}: {exc}") from exc
    # An offset can push a valid-looking time out of the years a datetime can hold.
    if not 0 <= due_ms <= LATEST_SCHEDULE_MS:
        raise InputError("invalid_schedule", f"scheduled_at {text!r} is out of range")
    return due_ms


def format_schedule(due_ms: int | None) -> str | None:
    if due_ms is None:
        return None
    moment = datetime.fromtimestamp(due_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_topic(topic: str) -> str:
    topic = topic.strip()
    if not topic:
        raise InputError("invalid_topic", "topic_id is required")
    if len(topic) > MAX_TOPIC_CHARS:
        raise InputError("invalid_topic", f"topic_id is longer than {MAX_TOPIC_CHARS} characters")
    if _CONTROL.search(topic):
        raise InputError("invalid_topic", "topic_id contains control characters")
    if topic in RESERVED_TOPICS:
        raise InputError("invalid_topic", f"topic_id {topic!r} is reserved (a key of the backlogs)")
    return topic


MAX_WEIGHT = 1000.0


def check_lane(lane: str, weight: float) -> None:
    if lane not in LANES:
        raise InputError("invalid_lane", f"lane must be one of {', '.join(LANES)}, not {lane!r}")
    if not 0 < weight <= MAX_WEIGHT:  # NaN fails too
        raise InputError(
            "invalid_weight", f"weight must be a number above 0 and at most {MAX_WEIGHT:g}"
        )


def check_from(from_email: str | None) -> str | None:
    """A sender override, exactly one mailbox, bare or as `Name <address>`, rebuilt (see
    `common.addresses`); None or empty = EMAIL_SENDER."""
    if from_email is None or not from_email.strip():
        return None
    try:
        return normalise_mailbox(from_email)
    except InvalidMailbox as exc:
        raise InputError("invalid_from", f"from_email {from_email[:100]!r} {exc}") from exc


def listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED_ERRORS])
    more = len(items) - MAX_LISTED_ERRORS
    return f"{shown} and {more} more" if more > 0 else shown


def check_subject(subject: str, limits: Limits, where: str = "subject") -> None:
    if not subject.strip():
        raise InputError("invalid_subject", f"{where} is required")
    if len(subject.encode()) > limits.max_subject_bytes:
        raise InputError("invalid_subject", f"{where} exceeds {limits.max_subject_bytes} bytes")
    if LINE_BREAKS.search(subject):
        raise InputError(
            "invalid_subject", f"{where} must not contain line breaks or control characters"
        )


def check_body(html: str, limits: Limits, where: str = "content") -> None:
    if not html.strip():
        raise InputError("invalid_content", f"{where} is required")
    if len(html.encode()) > limits.max_content_bytes:
        raise InputError("invalid_content", f"{where} exceeds {limits.max_content_bytes} bytes")


def check_text(text: str | None, html: str, limits: Limits) -> str:
    """The text part: as given, or generated from the HTML when absent or blank."""
    if text is None or not text.strip():
        return html_to_text(html)
    if len(text.encode()) > limits.max_content_bytes:
        raise InputError("invalid_text", f"text exceeds {limits.max_content_bytes} bytes")
    return text


def check_reply_to(addresses: list[str]) -> list[str]:
    if len(addresses) > MAX_REPLY_TO:
        raise InputError(
            "invalid_reply_to", f"{len(addresses)} reply_to addresses; at most {MAX_REPLY_TO}"
        )
    kept: list[str] = []
    for raw in addresses:
        # One mailbox each, parsed as strictly as from_email (see common.addresses).
        try:
            kept.append(normalise_mailbox(raw))
        except InvalidMailbox as exc:
            raise InputError("invalid_reply_to", f"reply_to {raw[:100]!r} {exc}") from exc
    return kept


def all_recipients(message: MessageRequest) -> list[tuple[str, dict[str, Any] | None]]:
    """`recipients` first (they carry data), then `emails`."""
    listed_first = [(r.email, r.data) for r in message.recipients]
    return listed_first + [(email, None) for email in message.emails]


@dataclass(slots=True)
class Addresses:
    """A message's recipients sorted out: the valid ones (first of each, case folded, a
    non-ASCII domain in punycode), their data as given and as checked JSON, the invalid ones
    (as given, each with why when more than its syntax is wrong), and how many repeated one
    before."""

    kept: list[str] = field(default_factory=list)
    kept_data: list[dict[str, Any] | None] = field(default_factory=list)
    own_data: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0

    def invalid_listed(self) -> str:
        """The invalid addresses for an error's detail: `bad, 'jörg@x.io' (has a non-ASCII...)`."""
        return listed(
            [f"{raw!r} ({self.why[raw]})" if raw in self.why else raw for raw in self.invalid]
        )


def sort_addresses(
    recipients: list[tuple[str, dict[str, Any] | None]], limits: Limits
) -> Addresses:
    out = Addresses()
    seen: set[str] = set()
    for n, (raw, data) in enumerate(recipients):
        try:
            address = ascii_address(raw)
        except InvalidAddress as exc:
            out.invalid.append(raw)
            if exc.specific:
                out.why[raw] = str(exc)
            continue
        folded = address.lower()
        if folded in seen:
            out.duplicates += 1
            continue
        seen.add(folded)
        out.kept.append(address)
        out.own_data.append(check_data(data, f"recipients[{n}].data", limits.max_data_bytes))
        out.kept_data.append(data or None)
    return out


def validate_message(message: MessageRequest, limits: Limits, *, strict: bool) -> ValidMessage:
    """Check one message; raises InputError when it cannot be sent at all (see module doc).
    A stored template must have been applied first (`ingest.templates.resolve`)."""
    if message.template is not None:
        raise InputError("invalid_template", "the template was not resolved")
    topic = check_topic(message.topic_id)
    check_subject(message.subject, limits)
    check_body(message.content, limits)
    recipients = all_recipients(message)
    if not recipients:
        raise InputError("no_recipients", "emails or recipients must list at least one address")
    if len(recipients) > limits.max_recipients:
        raise InputError(
            "too_many_recipients",
            f"{len(recipients)} addresses; at most {limits.max_recipients} per message",
        )
    due_ms = parse_schedule(message.scheduled_at)
    check_lane(message.lane, message.weight)
    mailing_list = list_of(topic, message.mailing_list)
    from_email = check_from(message.from_email)
    configuration_set = limits.ses_setup.check_configuration_set(message.configuration_set)
    tenant = limits.ses_setup.check_tenant(message.tenant, from_email)
    reply_to = check_reply_to(message.reply_to)
    headers = check_headers(message.headers)
    attachments, attachments_json = check_attachments(message.attachments)
    defaults_json = check_data(message.data, "data", limits.max_data_bytes)

    sorted_out = sort_addresses(recipients, limits)
    kept, kept_data, own_data = sorted_out.kept, sorted_out.kept_data, sorted_out.own_data
    invalid, duplicates = sorted_out.invalid, sorted_out.duplicates
    if not kept:
        raise InputError("invalid_addresses", f"no valid address: {sorted_out.invalid_listed()}")
    if invalid and strict:
        raise InputError("invalid_addresses", f"invalid addresses: {sorted_out.invalid_listed()}")

    text = check_text(message.text, message.content, limits)
    names = check_placeholder_names(message.subject, message.content, text)
    check_resolves(names, message.data or {}, kept, kept_data)
    check_subject_values(message.subject, message.data or {}, kept, kept_data)
    size = message_bytes(message.subject, message.content, text, headers, attachments)
    if size > limits.max_message_bytes:
        raise InputError(
            "message_too_large",
            f"the message would be about {size} bytes as SES receives it (attachments in "
            f"base64); at most {limits.max_message_bytes} (MAX_MESSAGE_BYTES)",
            status=413,
        )
    if message.recipients:
        listed_as: dict[str, Any] = {
            "emails": [],
            "recipients": [
                Recipient(email=email, data=data)
                for email, data in zip(kept, kept_data, strict=True)
            ],
        }
    else:
        listed_as = {"emails": kept}
    normalised = msgspec.structs.replace(
        message,
        topic_id=topic,
        scheduled_at=format_schedule(due_ms),
        from_email=from_email,
        configuration_set=configuration_set,
        tenant=tenant,
        text=text,
        data=message.data or None,
        reply_to=reply_to,
        headers=dict(headers),
        attachments=attachments,
        mailing_list=mailing_list,
        **listed_as,
    )
    return ValidMessage(
        request=normalised,
        due_ms=due_ms,
        invalid=invalid,
        invalid_detail=sorted_out.invalid_listed() if invalid else "",
        duplicates=duplicates,
        emails=kept,
        own_data=own_data,
        data=defaults_json,
        headers=headers,
        attachments=attachments_json,
    )


# --- the HTTP body ------------------------------------------------------------------------------

_TOPIC_NAMES = ("topic_id", "topicId", "planId", "plan_id")
_PLAN_NAMES = ("planId", "plan_id")
MAX_PLAN_ID = 2**63 - 1  # a Go int64 / SQL BIGINT
_SCHEDULE_NAMES = ("scheduled_at", "scheduledAt")
_FLAG_NAMES = {
    "track_opens": ("track_opens", "trackOpens"),
    "track_clicks": ("track_clicks", "trackClicks"),
    "unsubscribe": ("unsubscribe",),
}
_FROM_NAMES = ("from_email", "fromEmail")
_REPLY_TO_NAMES = ("reply_to", "replyTo")


def first_present(obj: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if obj.get(name) is not None:
            return obj[name]
    return None


def wrong_type(where: str, name: str, expected: str) -> InputError:
    return InputError("invalid_type", f"{where}.{name} must be {expected}")


def optional_str(obj: dict[str, Any], names: tuple[str, ...], where: str) -> str | None:
    value = first_present(obj, names)
    if value is not None and not isinstance(value, str):
        raise wrong_type(where, names[0], "a string")
    return value


def typed(value: Any, kind: Any, where: str, name: str) -> Any:
    """`value` converted to `kind` (lists of recipients or attachments), or a 400 saying where."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise InputError("invalid_type", f"{where}.{name}: {exc}") from exc


def parse_content(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """subject, content and text, or a template instead of them."""
    template = optional_str(obj, ("template",), where)
    subject, content, text = obj.get("subject"), obj.get("content"), obj.get("text")
    if template is not None:
        given = [name for name in ("subject", "content", "text") if obj.get(name) is not None]
        if given:
            raise InputError(
                "template_conflict",
                f"{where}: a template gives the content; leave out {', '.join(given)}",
            )
        return {"template": template}
    if not isinstance(subject, str):
        raise wrong_type(where, "subject", "a string")
    if not isinstance(content, str):
        raise wrong_type(where, "content", "a string")
    if text is not None and not isinstance(text, str):
        raise wrong_type(where, "text", "a string")
    return {"subject": subject, "content": content, "text": text}


def parse_extras(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """The optional fields of the personalised message model (`_EXTRAS`)."""
    extras = parse_addressees(obj, where)
    for extra in _EXTRAS:
        value = first_present(obj, extra.names)
        if value is None:
            continue
        if not extra.fits(value):
            raise wrong_type(where, extra.names[0], extra.expected)
        extras[extra.field] = extra.convert(value, where)
    return extras


def parse_addressees(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """`emails` (required unless `recipients` is given) and `recipients`."""
    extras: dict[str, Any] = {}
    emails = obj.get("emails")
    recipients = obj.get("recipients")
    if emails is not None or recipients is None:
        if not is_list_of_str(emails):
            raise wrong_type(where, "emails", "a list of strings")
        extras["emails"] = emails
    if recipients is not None:
        if not isinstance(recipients, list):
            raise wrong_type(where, "recipients", 'a list of {"email", "data"} objects')
        extras["recipients"] = typed(recipients, list[Recipient], where, "recipients")
    return extras


def is_list_of_str(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


@dataclass(frozen=True, slots=True)
class Extra:
    """One optional field: the names it may come under, the shape it must have (else 400
    "`field` must be `expected`"), and what is kept of it."""

    field: str
    names: tuple[str, ...]
    fits: Callable[[Any], bool]
    expected: str
    convert: Callable[[Any, str], Any] = lambda value, where: value


_EXTRAS = (
    Extra("data", ("data",), lambda v: isinstance(v, dict), "an object"),
    Extra(
        "reply_to",
        _REPLY_TO_NAMES,
        lambda v: isinstance(v, str) or is_list_of_str(v),
        "a list of addresses",
        lambda v, where: [v] if isinstance(v, str) else v,
    ),
    Extra(
        "headers",
        ("headers",),
        lambda v: isinstance(v, dict),
        "an object of header names to values",
    ),
    Extra(
        "attachments",
        ("attachments",),
        lambda v: isinstance(v, list),
        "a list",
        lambda v, where: typed(v, list[Attachment], where, "attachments"),
    ),
    Extra("lane", ("lane",), lambda v: isinstance(v, str), '"bulk" or "transactional"'),
    Extra("mailing_list", ("list",), lambda v: isinstance(v, str), "a list name"),
    Extra(
        "configuration_set",
        ("configuration_set", "configurationSet"),
        lambda v: isinstance(v, str),
        "a string",
    ),
    Extra("tenant", ("tenant",), lambda v: isinstance(v, str), "a string"),
    Extra(
        "weight",
        ("weight",),
        lambda v: not isinstance(v, bool) and isinstance(v, int | float),
        "a number",
        lambda v, where: float(v),
    ),
)


def parse_message(obj: Any, where: str, default_schedule: str | None) -> MessageRequest:
    if not isinstance(obj, dict):
        raise InputError("invalid_type", f"{where} must be an object")
    name = next((n for n in _TOPIC_NAMES if obj.get(n) is not None), None)
    if name is None:
        raise InputError("invalid_topic", f"{where}.topic_id is required")
    topic = obj[name]
    # Types are strict, with one exception: the Go service's plans had integer ids, so its
    # clients may send `"planId": 42`; a plan id is kept as its decimal text. `topic_id` and
    # `topicId` are strings only.
    if name in _PLAN_NAMES and type(topic) is int and 0 <= topic <= MAX_PLAN_ID:
        topic = str(topic)
    if not isinstance(topic, str):
        expected = "a string or a non-negative integer" if name in _PLAN_NAMES else "a string"
        raise wrong_type(where, name, expected)
    extras = parse_extras(obj, where)
    content = parse_content(obj, where)
    flags: dict[str, Any] = {}
    for name, aliases in _FLAG_NAMES.items():
        value = first_present(obj, aliases)
        if value is not None and not isinstance(value, bool):
            raise wrong_type(where, name, "true or false")
        if value is not None:
            flags[name] = value
    scheduled = optional_str(obj, _SCHEDULE_NAMES, where)
    return MessageRequest(
        topic_id=topic,
        scheduled_at=scheduled if scheduled is not None else default_schedule,
        from_email=optional_str(obj, _FROM_NAMES, where),
        **content,
        **extras,
        **flags,
    )


def parse_api_body(body: bytes, limits: Limits | None = None) -> list[MessageRequest]:
    """The message objects of a POST /v1/messages body, not yet validated; with `limits`, a
    body over the per-request counts is refused (413) before any message is looked at."""
    data = decode_json(body, msgspec.json.decode)
    if not isinstance(data, dict):
        raise InputError("invalid_type", "body must be a JSON object with 'messages'")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("invalid_type", "'messages' must be a non-empty list")
    if limits is not None:
        check_request_size(messages, limits)
    default_schedule = optional_str(data, _SCHEDULE_NAMES, "body")
    return [
        parse_message(obj, f"messages[{n}]", default_schedule) for n, obj in enumerate(messages)
    ]


def check_request_size(messages: list[Any], limits: Limits) -> None:
    """413 for a request with more message objects, or more recipients over all of them, than
    one request may carry (counted as sent, before duplicates are dropped)."""
    if len(messages) > limits.max_messages:
        raise InputError(
            "too_many_messages",
            f"{len(messages)} messages; at most {limits.max_messages} per request"
            " (MAX_MESSAGES_PER_REQUEST)",
            status=413,
        )
    total = sum(
        len(items)
        for obj in messages
        if isinstance(obj, dict)
        for name in ("emails", "recipients")
        if isinstance(items := obj.get(name), list)
    )
    if total > limits.max_request_recipients:
        raise InputError(
            "too_many_recipients",
            f"{total} addresses; at most {limits.max_request_recipients} per request"
            " (MAX_RECIPIENTS_PER_REQUEST)",
            status=413,
        )


def validate_body(body: bytes, limits: Limits) -> list[ValidMessage]:
    """Parse and strictly validate a whole request: any problem rejects all of it."""
    return validate_all(parse_api_body(body, limits), limits)


def validate_all(messages: list[MessageRequest], limits: Limits) -> list[ValidMessage]:
    """Strictly validate the messages of one request (templates applied): the first problem
    rejects all of them, its detail saying which message."""
    valid: list[ValidMessage] = []
    for n, message in enumerate(messages):
        try:
            valid.append(validate_message(message, limits, strict=True))
        except InputError as exc:
            raise in_message(n, exc) from exc
    return valid


def in_message(n: int, exc: InputError) -> InputError:
    return InputError(exc.error, f"messages[{n}]: {exc.detail}", exc.status, exc.extra)
