"""The one validation shared by the API and the dispatcher (pure functions, no Redis)."""

from __future__ import annotations

import json

import pytest

from sesflow.common.addresses import is_valid_address
from sesflow.common.errors import InputError
from sesflow.common.schema import MessageRequest
from sesflow.ingest.validation import (
    Limits,
    parse_api_body,
    parse_schedule,
    validate_body,
    validate_message,
)

LIMITS = Limits(max_recipients=5, max_subject_bytes=20, max_content_bytes=100)


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def message(**overrides: object) -> MessageRequest:
    fields: dict[str, object] = {
        "topic_id": "t",
        "emails": ["a@example.com"],
        "subject": "Hi",
        "content": "<p>x</p>",
    }
    fields.update(overrides)
    return MessageRequest(**fields)  # type: ignore[arg-type]


def test_rust_shape_with_top_level_schedule() -> None:
    parsed = parse_api_body(
        body(
            {
                "messages": [
                    {"topic_id": "n1", "emails": ["a@x.io"], "subject": "S", "content": "C"},
                    {
                        "topic_id": "n2",
                        "emails": ["b@x.io"],
                        "subject": "S",
                        "content": "C",
                        "scheduled_at": "2030-01-01T00:00:00Z",
                    },
                ],
                "scheduled_at": "2024-01-01 09:00:00",
            }
        )
    )
    assert [m.topic_id for m in parsed] == ["n1", "n2"]
    assert parsed[0].scheduled_at == "2024-01-01 09:00:00"
    assert parsed[1].scheduled_at == "2030-01-01T00:00:00Z"  # per-message wins


def test_go_shape_with_camel_case_and_plan_id() -> None:
    parsed = parse_api_body(
        body(
            {
                "messages": [
                    {
                        "topicId": "go",
                        "emails": ["a@x.io"],
                        "subject": "S",
                        "content": "C",
                        "scheduledAt": "2030-01-01T09:00:00+09:00",
                        "trackClicks": True,
                        "fromEmail": "News <news@x.io>",
                    },
                    {"planId": 42, "emails": ["b@x.io"], "subject": "S", "content": "C"},
                ]
            }
        )
    )
    assert parsed[0].topic_id == "go"
    assert parsed[0].scheduled_at == "2030-01-01T09:00:00+09:00"
    assert parsed[0].track_clicks is True
    assert parsed[0].from_email == "News <news@x.io>"
    assert parsed[1].topic_id == "42"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{not json", "invalid_json"),
        (b"[]", "invalid_type"),
        (b'{"messages": []}', "invalid_type"),
        (b'{"messages": "x"}', "invalid_type"),
        (b'{"messages": [1]}', "invalid_type"),
        (
            b'{"messages": [{"emails": ["a@x.io"], "subject": "s", "content": "c"}]}',
            "invalid_topic",
        ),
        (
            b'{"messages": [{"topic_id": "t", "emails": "a@x.io", "subject": "s",'
            b' "content": "c"}]}',
            "invalid_type",
        ),
        (
            b'{"messages": [{"topic_id": "t", "emails": [1], "subject": "s", "content": "c"}]}',
            "invalid_type",
        ),
        (
            b'{"messages": [{"topic_id": "t", "emails": ["a@x.io"], "subject": 1,'
            b' "content": "c"}]}',
            "invalid_type",
        ),
        (
            b'{"messages": [{"topic_id": true, "emails": ["a@x.io"], "subject": "s",'
            b' "content": "c"}]}',
            "invalid_type",
        ),
        (
            b'{"messages": [{"topic_id": "t", "emails": ["a@x.io"], "subject": "s", "content": "c",'
            b' "track_opens": "yes"}]}',
            "invalid_type",
        ),
        (
            b'{"messages": [{"topic_id": "t", "emails": ["a@x.io"], "subject": "s",'
            b' "content": "c"}], "scheduled_at": 5}',
            "invalid_type",
        ),
    ],
)
def test_malformed_bodies_are_input_errors(raw: bytes, error: str) -> None:
    with pytest.raises(InputError) as info:
        parse_api_body(raw)
    assert info.value.error == error
    assert info.value.status == 400


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com",
        "first.last+tag@sub.example.co.uk",
        "x_y-z@a-b.io",
        "o'neil@xn--bcher-kva.de",
    ],
)
def test_valid_addresses(address: str) -> None:
    assert is_valid_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "plain",
        "@example.com",
        "a@",
        "a@localhost",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a b@example.com",
        "a@-example.com",
        "a@example-.com",
        "a@example.c",
        "a@example.123",
        "a@exa_mple.com",
        "jöhn@example.com",
        "a@b@example.com",
        "x" * 65 + "@example.com",
        "a@" + "b" * 64 + ".com",
        "a@" + ".".join(["abcdefghi"] * 26) + ".com",
        "a@example.com\n",
    ],
)
def test_invalid_addresses(address: str) -> None:
    assert not is_valid_address(address)


def test_duplicates_are_dropped_case_insensitively_keeping_the_first() -> None:
    valid = validate_message(
        message(emails=[" A@x.io", "b@x.io", "a@X.io", "B@x.io"]), LIMITS, strict=True
    )
    assert valid.request.emails == ["A@x.io", "b@x.io"]
    assert valid.duplicates == 2


def test_strict_mode_rejects_any_invalid_address() -> None:
    with pytest.raises(InputError) as info:
        validate_message(message(emails=["a@x.io", "bad", "worse@"]), LIMITS, strict=True)
    assert info.value.error == "invalid_addresses"
    assert "bad" in info.value.detail and "worse@" in info.value.detail


def test_lenient_mode_keeps_valid_addresses_and_reports_the_others() -> None:
    valid = validate_message(message(emails=["a@x.io", "bad", "c@x.io"]), LIMITS, strict=False)
    assert valid.request.emails == ["a@x.io", "c@x.io"]
    assert valid.invalid == ["bad"]


@pytest.mark.parametrize("strict", [True, False])
def test_a_message_without_any_valid_address_is_rejected(strict: bool) -> None:
    with pytest.raises(InputError) as info:
        validate_message(message(emails=["bad", "worse"]), LIMITS, strict=strict)
    assert info.value.error == "invalid_addresses"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"emails": []}, "no_recipients"),
        ({"emails": [f"u{n}@x.io" for n in range(6)]}, "too_many_recipients"),
        ({"subject": "  "}, "invalid_subject"),
        ({"subject": "é" * 11}, "invalid_subject"),  # 22 bytes > 20
        ({"subject": "a\r\nBcc: x@y.io"}, "invalid_subject"),
        ({"content": ""}, "invalid_content"),
        ({"content": "x" * 101}, "invalid_content"),
        ({"topic_id": " "}, "invalid_topic"),
        ({"topic_id": "t" * 201}, "invalid_topic"),
        ({"topic_id": "a\x00b"}, "invalid_topic"),
        ({"topic_id": "topics"}, "invalid_topic"),  # the key of the pump's set of topics
        ({"topic_id": " weights "}, "invalid_topic"),  # ... and of their weights
        ({"scheduled_at": "tomorrow"}, "invalid_schedule"),
        ({"scheduled_at": "2024-13-01 09:00:00"}, "invalid_schedule"),
        ({"from_email": "not an address"}, "invalid_from"),
    ],
)
def test_message_rules(overrides: dict[str, object], error: str) -> None:
    with pytest.raises(InputError) as info:
        validate_message(message(**overrides), LIMITS, strict=True)
    assert info.value.error == error


def test_schedule_formats() -> None:
    naive = parse_schedule("2024-01-01 09:00:00")
    assert naive == 1704099600000  # naive = UTC
    assert parse_schedule("2024-01-01T09:00:00Z") == naive
    assert parse_schedule("2024-01-01T18:00:00+09:00") == naive
    assert parse_schedule("2024-01-01T09:00:00.250Z") == naive + 250
    assert parse_schedule(None) is None
    assert parse_schedule("") is None


def test_normalised_message_carries_rfc3339_schedule() -> None:
    valid = validate_message(message(scheduled_at="2024-01-01 09:00:00"), LIMITS, strict=True)
    assert valid.request.scheduled_at == "2024-01-01T09:00:00.000Z"
    assert valid.due_ms == 1704099600000
    # validating the normalised message again changes nothing (the dispatcher does it)
    again = validate_message(valid.request, LIMITS, strict=False)
    assert again.request == valid.request


def test_validate_body_names_the_failing_message() -> None:
    raw = body(
        {
            "messages": [
                {"topic_id": "t", "emails": ["a@x.io"], "subject": "s", "content": "c"},
                {"topic_id": "t", "emails": ["nope"], "subject": "s", "content": "c"},
            ]
        }
    )
    with pytest.raises(InputError) as info:
        validate_body(raw, LIMITS)
    assert info.value.detail.startswith("messages[1]:")


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59", "1969-12-31T23:00:00Z"]
)
def test_schedules_out_of_range_are_input_errors(value: str) -> None:
    with pytest.raises(InputError) as info:
        parse_schedule(value)
    assert info.value.error == "invalid_schedule"
