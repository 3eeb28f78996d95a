"""The one validation of a message, shared by the HTTP handler and the dispatcher.

Two entry points feed it:

* `parse_api_body` reads a `POST /v1/messages` body in either seed's shape and returns one
  `MessageRequest` per element of `messages[]`:
    - Rust: `{"messages": [{"topic_id", "emails", "subject", "content"}], "scheduled_at": ...}`
    - Go:   `{"messages": [{"topicId", "emails", "subject", "content", "scheduledAt"}]}`
  `planId` / `plan_id` name the topic too; a per-message `scheduled_at` / `scheduledAt` wins over
  the top-level one. Optional per message: `track_opens`, `track_clicks`, `unsubscribe`,
  `from_email` (or their camelCase spellings).
* the dispatcher decodes an entry of `requests` with `common.schema.decode_request`.

Both then call `validate_message`, which checks the topic, subject, content, sizes, schedule and
every address, and returns the message normalised (addresses trimmed, duplicates dropped keeping
the first, schedule rewritten as RFC 3339 UTC).

Policy for invalid addresses:

* a message whose every address is invalid (or that has none) is rejected as a whole;
* the API (`strict=True`) rejects the whole request with 400, listing the bad addresses, and
  writes nothing: the caller is there to fix it;
* the dispatcher (`strict=False`, entries XADDed by producers, nobody to answer) keeps the valid
  addresses and reports the invalid ones, which it records as one `rejected` event.

Duplicates (compared case-insensitively) are never an error: the first spelling is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from common.addresses import InvalidMailbox, is_valid_address, normalise_mailbox
from common.errors import InputError
from common.http import decode_json
from common.schema import MessageRequest
from common.settings import Settings

MAX_TOPIC_CHARS = 200
MAX_LISTED_ERRORS = 20
LATEST_SCHEDULE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

_SCHEDULE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})?"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Limits:
    max_recipients: int
    max_subject_bytes: int
    max_content_bytes: int
    # Per POST: one request is one transaction and one idempotency record.
    max_messages: int = 1000
    max_request_recipients: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_recipients=settings.max_recipients,
            max_subject_bytes=settings.max_subject_bytes,
            max_content_bytes=settings.max_content_bytes,
            max_messages=settings.max_messages_per_request,
            max_request_recipients=settings.max_recipients_per_request,
        )


@dataclass(frozen=True, slots=True)
class ValidMessage:
    """A message that passed validation, normalised; `invalid` lists the addresses dropped
    (always empty in strict mode) and `duplicates` how many repeated addresses were dropped."""

    request: MessageRequest
    due_ms: int | None
    invalid: list[str] = field(default_factory=list)
    duplicates: int = 0


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
    return topic


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


def validate_message(message: MessageRequest, limits: Limits, *, strict: bool) -> ValidMessage:
    """Check one message; raises InputError when it cannot be sent at all (see module doc)."""
    topic = check_topic(message.topic_id)
    subject = message.subject
    if not subject.strip():
        raise InputError("invalid_subject", "subject is required")
    if len(subject.encode()) > limits.max_subject_bytes:
        raise InputError("invalid_subject", f"subject exceeds {limits.max_subject_bytes} bytes")
    if "\r" in subject or "\n" in subject:
        raise InputError("invalid_subject", "subject must not contain line breaks")
    if not message.content.strip():
        raise InputError("invalid_content", "content is required")
    if len(message.content.encode()) > limits.max_content_bytes:
        raise InputError("invalid_content", f"content exceeds {limits.max_content_bytes} bytes")
    if not message.emails:
        raise InputError("no_recipients", "emails must list at least one address")
    if len(message.emails) > limits.max_recipients:
        raise InputError(
            "too_many_recipients",
            f"{len(message.emails)} addresses; at most {limits.max_recipients} per message",
        )
    due_ms = parse_schedule(message.scheduled_at)
    from_email = check_from(message.from_email)

    kept: list[str] = []
    invalid: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for raw in message.emails:
        address = raw.strip()
        if not is_valid_address(address):
            invalid.append(raw)
            continue
        folded = address.lower()
        if folded in seen:
            duplicates += 1
            continue
        seen.add(folded)
        kept.append(address)
    if not kept:
        raise InputError("invalid_addresses", f"no valid address: {listed(invalid)}")
    if invalid and strict:
        raise InputError("invalid_addresses", f"invalid addresses: {listed(invalid)}")
    normalised = msgspec.structs.replace(
        message,
        topic_id=topic,
        emails=kept,
        scheduled_at=format_schedule(due_ms),
        from_email=from_email,
    )
    return ValidMessage(request=normalised, due_ms=due_ms, invalid=invalid, duplicates=duplicates)


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
    emails = obj.get("emails")
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        raise wrong_type(where, "emails", "a list of strings")
    subject, content = obj.get("subject"), obj.get("content")
    if not isinstance(subject, str):
        raise wrong_type(where, "subject", "a string")
    if not isinstance(content, str):
        raise wrong_type(where, "content", "a string")
    flags: dict[str, bool] = {}
    for name, aliases in _FLAG_NAMES.items():
        value = first_present(obj, aliases)
        if value is not None and not isinstance(value, bool):
            raise wrong_type(where, name, "true or false")
        if value is not None:
            flags[name] = value
    scheduled = optional_str(obj, _SCHEDULE_NAMES, where)
    return MessageRequest(
        topic_id=topic,
        emails=emails,
        subject=subject,
        content=content,
        scheduled_at=scheduled if scheduled is not None else default_schedule,
        from_email=optional_str(obj, _FROM_NAMES, where),
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
        len(emails)
        for obj in messages
        if isinstance(obj, dict) and isinstance(emails := obj.get("emails"), list)
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
    valid: list[ValidMessage] = []
    for n, message in enumerate(parse_api_body(body, limits)):
        try:
            valid.append(validate_message(message, limits, strict=True))
        except InputError as exc:
            raise InputError(exc.error, f"messages[{n}]: {exc.detail}", exc.status) from exc
    return valid
