"""The personalised message model, field by field: merge data, recipients, text part, reply-to,
headers, attachments (validation only: no Redis)."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest

from sesflow.common.errors import InputError
from sesflow.common.schema import Attachment, MessageRequest, Recipient
from sesflow.ingest.attachments import BLOCKED_EXTENSIONS
from sesflow.ingest.text_part import html_to_text
from sesflow.ingest.validation import (
    Limits,
    ValidMessage,
    parse_api_body,
    validate_body,
    validate_message,
)

LIMITS = Limits(max_recipients=1000, max_subject_bytes=998, max_content_bytes=100_000)
PDF = base64.b64encode(b"%PDF-1.4 hello").decode()


def body(**fields: Any) -> bytes:
    message: dict[str, Any] = {"topic_id": "spring", "subject": "Hi", "content": "<p>Hello</p>"}
    message.update(fields)
    if "emails" not in message and "recipients" not in message:
        message["emails"] = ["a@example.com"]
    return json.dumps({"messages": [message]}).encode()


def accept(**fields: Any) -> ValidMessage:
    [valid] = validate_body(body(**fields), LIMITS)
    return valid


def refused(**fields: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        accept(**fields)
    return caught.value


# --- the issue's example ------------------------------------------------------------------------

ISSUE_EXAMPLE = {
    "topic_id": "spring",
    "subject": "Hi {{first_name}}, spring is here",
    "content": "<p>Hello {{first_name}}, your code is <b>{{code}}</b>.</p>",
    "text": "Hello {{first_name}}, your code is {{code}}.",
    "data": {"first_name": "there"},
    "recipients": [
        {"email": "ada@example.com", "data": {"first_name": "Ada", "code": "A1"}},
        {"email": "alan@example.com", "data": {"code": "B2"}},
    ],
    "reply_to": ["help@example.com"],
    "headers": {"X-Campaign": "spring"},
    "attachments": [{"filename": "a.pdf", "content_type": "application/pdf", "content": PDF}],
}


def test_the_issue_example_is_accepted_and_normalised() -> None:
    [valid] = validate_body(json.dumps({"messages": [ISSUE_EXAMPLE]}).encode(), LIMITS)
    assert valid.emails == ["ada@example.com", "alan@example.com"]
    assert [json.loads(d) for d in valid.own_data] == [
        {"first_name": "Ada", "code": "A1"},
        {"code": "B2"},
    ]
    assert json.loads(valid.data) == {"first_name": "there"}
    assert valid.headers == (("X-Campaign", "spring"),)
    assert json.loads(valid.attachments) == [
        {"filename": "a.pdf", "content": PDF, "content_type": "application/pdf"}
    ]
    request = valid.request
    assert request.text == "Hello {{first_name}}, your code is {{code}}."
    assert request.reply_to == ["help@example.com"]
    # What the API XADDs decodes back to the same message, and validates the same way again.
    again = validate_message(
        msgspec.json.decode(msgspec.json.encode(request), type=MessageRequest),
        LIMITS,
        strict=False,
    )
    assert (again.emails, again.own_data, again.data) == (valid.emails, valid.own_data, valid.data)


def test_an_older_service_shaped_message_is_unchanged_but_gains_a_text_part() -> None:
    valid = accept(content="<h1>News</h1><p>Read <a href='https://x.io/a'>this</a>.</p>")
    assert valid.request.emails == ["a@example.com"] and valid.request.recipients == []
    assert valid.own_data == [""] and valid.data == "" and valid.attachments == ""
    assert "News" in (valid.request.text or "") and "https://x.io/a" in (valid.request.text or "")


# --- recipients and their data ------------------------------------------------------------------


def test_recipients_come_first_and_a_duplicate_keeps_its_first_entry() -> None:
    valid = accept(
        emails=["b@example.com", "A@example.com", "c@example.com"],
        recipients=[
            {"email": "a@example.com", "data": {"n": 1}},
            {"email": "b@example.com", "data": {"n": 2}},
            {"email": "B@example.com", "data": {"n": 3}},
        ],
    )
    assert valid.emails == ["a@example.com", "b@example.com", "c@example.com"]
    assert valid.own_data == ['{"n":1}', '{"n":2}', ""]
    assert valid.duplicates == 3
    # the normalised request lists everyone as recipients, in job order
    assert [r.email for r in valid.request.recipients] == valid.emails
    assert valid.request.emails == []


def test_missing_data_is_a_400_that_lists_placeholders_and_recipients() -> None:
    error = refused(
        subject="Hi {{first_name}}",
        content="<p>{{code}} {{ first_name }}</p>",
        recipients=[
            {"email": "ada@example.com", "data": {"first_name": "Ada", "code": "A1"}},
            {"email": "alan@example.com", "data": {"code": "B2"}},
            {"email": "grace@example.com", "data": {"code": "C3"}},
        ],
    )
    assert (error.status, error.error) == (400, "missing_data")
    assert "{{first_name}} is missing for 2 of 3: alan@example.com, grace@example.com" in (
        error.detail
    )
    assert error.extra == {
        "missing": [
            {
                "placeholder": "first_name",
                "missing_for": 2,
                "recipients": ["alan@example.com", "grace@example.com"],
            }
        ]
    }


def test_a_placeholder_no_recipient_fills_is_named_and_the_list_is_bounded() -> None:
    emails = [f"u{n}@example.com" for n in range(30)]
    error = refused(content="<p>{{nowhere}}</p>", emails=emails)
    assert error.error == "missing_data"
    assert "{{nowhere}} resolves for no recipient, missing for 30 of 30" in error.detail
    assert "and 20 more" in error.detail
    [problem] = error.extra["missing"]
    assert problem["recipients"] == emails[:10] and problem["missing_for"] == 30


def test_defaults_fill_what_recipients_leave_out_and_nested_names_walk_objects() -> None:
    valid = accept(
        subject="Hi {{user.first}}",
        content="<p>{{code}} {{flag}} {{n}}</p>",
        data={"code": "DEFAULT", "flag": True, "n": 2.0, "user": {"first": "you"}},
        recipients=[{"email": "a@example.com", "data": {"user": {"first": "Ada"}}}],
    )
    assert valid.emails == ["a@example.com"]
    # A recipient's top-level key replaces the default's whole object.
    error = refused(
        subject="Hi {{user.first}} {{user.last}}",
        data={"user": {"first": "you", "last": "there"}},
        recipients=[{"email": "a@example.com", "data": {"user": {"first": "Ada"}}}],
    )
    assert "{{user.last}}" in error.detail


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"x": None}, "data.x is null"),
        ({"x": [1, 2]}, "data.x is an array"),
        ({"x": {"y": None}}, "data.x.y is null"),
        ({"sesflow_open_url": "x"}, "reserved"),
        ("text", "data must be an object"),
    ],
)
def test_invalid_message_data_is_refused(data: Any, expected: str) -> None:
    error = refused(data=data)
    assert error.status == 400 and expected in error.detail
    assert error.error in {"invalid_data", "reserved_name", "invalid_type"}


def test_invalid_recipient_data_is_refused() -> None:
    error = refused(recipients=[{"email": "a@example.com", "data": {"code": None}}])
    assert error.error == "invalid_data" and "recipients[0].data.code is null" in error.detail
    error = refused(recipients=[{"email": "a@example.com", "data": ["x"]}])
    assert error.error == "invalid_type" and "recipients" in error.detail
    error = refused(recipients=[{"data": {}}])
    assert error.error == "invalid_type"
    error = refused(recipients={"email": "a@example.com"})
    assert error.error == "invalid_type"


def test_data_is_bounded_per_object() -> None:
    limits = Limits(
        max_recipients=10, max_subject_bytes=998, max_content_bytes=100_000, max_data_bytes=100
    )
    with pytest.raises(InputError, match="MAX_DATA_BYTES"):
        validate_body(body(data={"x": "y" * 200}), limits)
    with pytest.raises(InputError, match=r"recipients\[0\]\.data exceeds 100 bytes"):
        validate_body(
            body(recipients=[{"email": "a@example.com", "data": {"x": "y" * 200}}]), limits
        )
    deep: dict[str, Any] = {"v": "x"}
    for _ in range(10):
        deep = {"d": deep}
    with pytest.raises(InputError, match="nests deeper"):
        validate_body(body(data=deep), LIMITS)


def test_non_finite_numbers_are_refused() -> None:
    message = MessageRequest(
        topic_id="t", emails=["a@x.io"], subject="S", content="C", data={"x": float("inf")}
    )
    with pytest.raises(InputError, match="finite"):
        validate_message(message, LIMITS, strict=False)


def test_reserved_placeholders_are_refused() -> None:
    error = refused(content="<p>{{sesflow_unsubscribe_url}}</p>")
    assert error.error == "reserved_name"


def test_the_dispatcher_keeps_valid_addresses_but_refuses_missing_data() -> None:
    message = MessageRequest(
        topic_id="t",
        subject="Hi {{name}}",
        content="<p>x</p>",
        recipients=[
            Recipient(email="bad", data={"name": "B"}),
            Recipient(email="a@example.com", data={"name": "A"}),
        ],
    )
    valid = validate_message(message, LIMITS, strict=False)
    assert (valid.emails, valid.invalid, valid.own_data) == (
        ["a@example.com"],
        ["bad"],
        ['{"name":"A"}'],
    )
    with pytest.raises(InputError, match="missing_data"):
        validate_message(
            msgspec.structs.replace(message, recipients=[Recipient(email="a@example.com")]),
            LIMITS,
            strict=False,
        )


# --- text part ----------------------------------------------------------------------------------


def test_generated_text_keeps_placeholders_and_values_appear_once_filled() -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body><h1>Hi {{ first_name }}</h1>"
        "<p>Your code is <b>{{code}}</b> &amp; more: <a href='https://x.io/{{code}}'>go</a></p>"
        "<ul><li>one</li><li>two</li></ul><script>alert(1)</script></body></html>"
    )
    text = html_to_text(html)
    assert "Hi {{ first_name }}" in text
    assert "Your code is {{code}} & more" in text
    assert "https://x.io/{{code}}" in text
    assert "one" in text and "two" in text
    assert "alert" not in text and "color" not in text


def test_braces_the_html_only_spells_as_entities_are_no_placeholder_of_the_text() -> None:
    html = "<p>Write &#123;&#123;name&#125;&#125; in your template, {{first_name}}.</p>"
    valid = accept(content=html, data={"first_name": "Ada"})
    text = valid.request.text or ""
    assert "{{first_name}}" in text
    assert "{{name}}" not in text and "name}}" in text  # shown, but never filled in


@pytest.mark.parametrize("value", ["Ada\r\nBcc: eve@example.com", "Ada\u2028", "bell\x07"])
def test_a_value_that_would_break_the_subject_line_is_refused(value: str) -> None:
    error = refused(
        subject="Hi {{name}}", recipients=[{"email": "a@example.com", "data": {"name": value}}]
    )
    assert error.error == "invalid_data" and "a@example.com" in error.detail
    assert refused(subject=f"Hi {value}").error == "invalid_subject"
    # the same value in the body is fine
    assert accept(content="<p>{{name}}</p>", data={"name": value})


def test_given_text_wins_and_blank_text_is_generated() -> None:
    assert accept(text="Plain {{x}}", data={"x": 1}).request.text == "Plain {{x}}"
    assert accept(text="  ").request.text == "Hello\n"


def test_placeholders_of_the_text_part_are_checked_too() -> None:
    assert refused(text="Hi {{only_in_text}}").error == "missing_data"


def test_text_is_bounded_and_typed() -> None:
    assert refused(text="x" * 100_001).error == "invalid_text"
    assert refused(text=5).error == "invalid_type"


# --- reply-to -----------------------------------------------------------------------------------


def test_reply_to_takes_up_to_ten_valid_addresses() -> None:
    assert accept(reply_to="Help <help@example.com>").request.reply_to == [
        "Help <help@example.com>"
    ]
    assert len(accept(reply_to=[f"r{n}@example.com" for n in range(10)]).request.reply_to) == 10
    assert refused(reply_to=[f"r{n}@example.com" for n in range(11)]).error == "invalid_reply_to"
    assert refused(reply_to=["not-an-address"]).error == "invalid_reply_to"
    assert refused(reply_to=["a@example.com\r\nBcc: x@example.com"]).error == "invalid_reply_to"
    assert refused(reply_to=[5]).error == "invalid_type"
    # one mailbox each, as strict as from_email
    assert refused(reply_to=["a@example.com, b@example.com"]).error == "invalid_reply_to"
    assert refused(reply_to=["a@example.com <b@example.com>"]).error == "invalid_reply_to"
    assert accept(reply_to=["Zoë <z@example.com>"]).request.reply_to == [
        "=?utf-8?q?Zo=C3=AB?= <z@example.com>"
    ]


def test_recipients_count_towards_the_per_request_limit() -> None:
    limits = Limits(
        max_recipients=10, max_subject_bytes=998, max_content_bytes=1000, max_request_recipients=3
    )
    validate_body(
        body(emails=["a@x.io"], recipients=[{"email": "b@x.io"}, {"email": "c@x.io"}]), limits
    )
    with pytest.raises(InputError) as caught:
        validate_body(
            body(
                emails=["a@x.io", "d@x.io"], recipients=[{"email": "b@x.io"}, {"email": "c@x.io"}]
            ),
            limits,
        )
    assert (caught.value.status, caught.value.error) == (413, "too_many_recipients")


# --- headers ------------------------------------------------------------------------------------


def test_headers_at_the_ses_limits_pass() -> None:
    name = "X-" + "n" * 124
    assert accept(headers={name: "v" * (996 - len(name))}).headers[0][0] == name
    assert len(accept(headers={f"X-H{n}": "x" for n in range(12)}).headers) == 12


def test_custom_headers_are_kept_in_order() -> None:
    valid = accept(headers={"X-Campaign": "spring", "X-Entity-Ref-ID": "42", "Precedence": "bulk"})
    assert valid.headers == (
        ("X-Campaign", "spring"),
        ("X-Entity-Ref-ID", "42"),
        ("Precedence", "bulk"),
    )


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "CC",
        "Bcc",
        "Subject",
        "Reply-To",
        "List-Unsubscribe",
        "list-unsubscribe-post",
        "Message-ID",
        "Date",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Return-Path",
        "X-Request-ID",
        "X-SES-CONFIGURATION-SET",
    ],
)
def test_headers_sesflow_owns_are_refused(name: str) -> None:
    error = refused(headers={name: "x"})
    assert error.error == "invalid_header" and "set by sesflow" in error.detail


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Bad": "a\r\nBcc: victim@example.com"},
        {"X-Bad": "a\nb"},
        {"X-Bad": "a\x00b"},
        {"X Bad": "x"},
        {"X-Bad:": "x"},
        {"": "x"},
        {"X-Ünicode": "x"},
        {"X-Value": "café"},
        {"X-Tab": "a\tb"},
        {"X-Empty": "  "},
        {"X-Long": "x" * 996},
        {"X-" + "n" * 125: "x"},
        {"X-" + "n" * 100: "x" * 895},
        {"X-Number": 5},
        {"X-A": "1", "x-a": "2"},
        {f"X-H{n}": "x" for n in range(13)},
    ],
)
def test_invalid_headers_are_refused(headers: dict[str, Any]) -> None:
    error = refused(headers=headers)
    assert (error.status, error.error) == (400, "invalid_header")


def test_headers_must_be_an_object() -> None:
    assert refused(headers=["X-A: b"]).error == "invalid_type"


# --- attachments --------------------------------------------------------------------------------


def test_attachment_content_is_checked_and_stored_without_line_breaks() -> None:
    raw = bytes(range(256)) * 10
    wrapped = base64.encodebytes(raw).decode()  # 76-character lines
    valid = accept(attachments=[{"filename": "data.bin", "content": wrapped}])
    [stored] = json.loads(valid.attachments)
    assert base64.b64decode(stored["content"], validate=True) == raw
    assert stored["content_type"] == "application/octet-stream"  # guessed: unknown extension
    guessed = accept(attachments=[{"filename": "photo.PNG", "content": PDF}])
    assert json.loads(guessed.attachments)[0]["content_type"] == "image/png"


@pytest.mark.parametrize(
    ("attachment", "expected"),
    [
        ({"filename": "a.pdf", "content": "not base64!"}, "not valid base64"),
        ({"filename": "a.pdf", "content": ""}, "empty"),
        ({"filename": "", "content": PDF}, "filename"),
        ({"filename": "../etc/passwd", "content": PDF}, "no path"),
        ({"filename": "a\r\nb.pdf", "content": PDF}, "no path"),
        ({"filename": "setup.EXE", "content": PDF}, "does not accept .exe"),
        ({"filename": "run.ps1", "content": PDF}, "does not accept .ps1"),
        ({"filename": "a.pdf", "content": PDF, "content_type": "pdf"}, "type/subtype"),
        ({"filename": "a.pdf", "content": PDF, "content_type": "a/b\r\nX: y"}, "type/subtype"),
        ({"filename": "a.pdf", "content": PDF, "content_type": "a/" + "b" * 77}, "type/subtype"),
    ],
)
def test_invalid_attachments_are_refused(attachment: dict[str, Any], expected: str) -> None:
    error = refused(attachments=[attachment])
    assert error.error == "invalid_attachment" and expected in error.detail


def test_every_extension_ses_refuses_is_refused() -> None:
    assert {"exe", "bat", "cmd", "com", "js", "vbs", "scr", "msi", "lnk", "jar"} - set(
        BLOCKED_EXTENSIONS
    ) == {"jar"}  # SES accepts .jar; its list is what counts
    for extension in BLOCKED_EXTENSIONS:
        assert refused(attachments=[{"filename": f"f.{extension}", "content": PDF}]).error == (
            "invalid_attachment"
        )


def test_attachments_must_be_typed() -> None:
    assert refused(attachments=[{"filename": "a.pdf"}]).error == "invalid_type"
    assert refused(attachments={"filename": "a.pdf"}).error == "invalid_type"


def test_a_message_over_the_size_limit_is_413() -> None:
    limits = Limits(
        max_recipients=10,
        max_subject_bytes=998,
        max_content_bytes=100_000,
        max_message_bytes=64 * 1024,
    )
    small = base64.b64encode(b"x" * 20_000).decode()
    validate_body(body(attachments=[{"filename": "a.txt", "content": small}]), limits)
    large = base64.b64encode(b"x" * 40_000).decode()
    with pytest.raises(InputError) as caught:
        validate_body(
            body(attachments=[{"filename": f"{n}.txt", "content": large} for n in range(2)]),
            limits,
        )
    assert (caught.value.status, caught.value.error) == (413, "message_too_large")
    assert "MAX_MESSAGE_BYTES" in caught.value.detail


# --- templates in a message ---------------------------------------------------------------------


def test_a_template_replaces_subject_content_and_text() -> None:
    [message] = parse_api_body(
        json.dumps(
            {"messages": [{"topic_id": "t", "emails": ["a@x.io"], "template": "w"}]}
        ).encode()
    )
    assert message.template == "w" and message.subject == ""
    for given in ("subject", "content", "text"):
        error = refused(template="w", **{given: "x"})
        assert error.error == "template_conflict" and given in error.detail


def test_an_unresolved_template_never_validates() -> None:
    message = MessageRequest(topic_id="t", emails=["a@x.io"], template="w")
    with pytest.raises(InputError, match="invalid_template"):
        validate_message(message, LIMITS, strict=False)


def test_typed_producer_entries_decode_with_the_new_fields() -> None:
    entry = {
        "topic_id": "t",
        "recipients": [{"email": "a@x.io", "data": {"n": 1}}],
        "subject": "S {{n}}",
        "content": "C",
        "attachments": [{"filename": "a.pdf", "content": PDF}],
    }
    message = msgspec.json.decode(json.dumps(entry), type=MessageRequest)
    assert message.recipients == [Recipient(email="a@x.io", data={"n": 1})]
    assert message.attachments == [Attachment(filename="a.pdf", content=PDF)]
    assert message.recipient_count == 1
