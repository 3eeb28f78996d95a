from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import pytest

from sesflow.cli.dlq import before_id
from sesflow.cli.output import age, parse_duration
from sesflow.cli.recipients import RecipientsError, parse
from sesflow.cli.send import plan, resolve_when
from sesflow.common.errors import InputError


def test_csv_with_an_email_column_and_a_header() -> None:
    data = b"name,Email,city\nAnn,ann@example.com,Oslo\nBob,bob@example.com,Rome\n"
    assert parse("list.csv", data).emails == ["ann@example.com", "bob@example.com"]


def test_csv_without_header_uses_the_first_column() -> None:
    data = b"ann@example.com,Ann\nbob@example.com,Bob\n"
    assert parse("list.csv", data).emails == ["ann@example.com", "bob@example.com"]


def test_csv_header_without_email_column_and_other_separators() -> None:
    assert parse("x.csv", b"name;address\nAnn;ann@example.com\n").emails == ["ann@example.com"]
    assert parse("x.csv", b"who\tmail\nAnn\tann@example.com\n").emails == ["ann@example.com"]
    assert parse("x.txt", b"\xef\xbb\xbfann@example.com\n\nbob@example.com\n").emails == [
        "ann@example.com",
        "bob@example.com",
    ]


def test_invalid_and_duplicate_addresses_are_reported() -> None:
    data = b"email\nann@example.com\nnot-an-address\nANN@example.com\nbob@example\n"
    recipients = parse("list.csv", data)
    assert recipients.emails == ["ann@example.com"]
    assert recipients.invalid == [(3, "not-an-address"), (5, "bob@example")]
    assert recipients.duplicates == 1


def test_json_lists_of_strings_or_objects() -> None:
    assert parse("a.json", b'["a@example.com", " b@example.com "]').emails == [
        "a@example.com",
        "b@example.com",
    ]
    objects = b'[{"email": "a@example.com", "name": "A"}, {"email": "x"}]'
    recipients = parse("list", objects)
    assert recipients.emails == ["a@example.com"]
    assert recipients.invalid == [(2, "x")]
    for bad in (b"{", b'{"a": 1}', b"[1, 2]"):
        with pytest.raises(RecipientsError):
            parse("a.json", bad)


def test_batches_carry_stable_idempotency_keys() -> None:
    args = argparse.Namespace(
        topic="t",
        subject="S",
        batch=2,
        at=None,
        no_track_opens=False,
        track_clicks=True,
        no_unsubscribe=False,
        from_email=None,
    )
    data = b"a@example.com\nb@example.com\nc@example.com\n"
    first = plan(args, data, parse("l.csv", data), "<p>x</p>")
    again = plan(args, data, parse("l.csv", data), "<p>x</p>")
    assert [b.message.emails for b in first] == [
        ["a@example.com", "b@example.com"],
        ["c@example.com"],
    ]
    assert [b.key for b in first] == [b.key for b in again]
    assert first[0].key != first[1].key
    assert first[0].message.track_clicks is True
    other_topic = plan(
        argparse.Namespace(**{**vars(args), "topic": "u"}), data, parse("l", data), ""
    )
    assert other_topic[0].key != first[0].key


def test_when_and_durations() -> None:
    now = datetime(2024, 6, 1, 9, 0, tzinfo=UTC).timestamp()
    assert resolve_when("+90m", now) == "2024-06-01T10:30:00Z"
    assert resolve_when("2024-06-01 09:00:00") == "2024-06-01T09:00:00.000Z"
    assert resolve_when(None) is None
    for bad in ("+soon", "tomorrow"):
        with pytest.raises(InputError):
            resolve_when(bad)
    assert parse_duration("2h") == 7200
    assert parse_duration("30") == 30
    assert age(0, 90_000) == "1m"
    assert before_id("1m", now_ms=100_000) == "40000-0"
    assert before_id("1718000000000-5") == "1718000000000-5"
    with pytest.raises(InputError):
        before_id("yesterday")


def test_auth_headers_follow_the_api_settings() -> None:
    import jwt

    from sesflow.cli.output import auth_headers
    from sesflow.common.settings import settings_from_mapping

    assert auth_headers(settings_from_mapping({})) == {}
    assert auth_headers(settings_from_mapping({"API_KEY": "cli-test-api-key"})) == {
        "x-api-key": "cli-test-api-key"
    }
    header = auth_headers(
        settings_from_mapping({"JWT_SECRET": "a-secret-of-at-least-32-bytes-long"})
    )["Authorization"]
    assert jwt.decode(
        header.removeprefix("Bearer "), "a-secret-of-at-least-32-bytes-long", algorithms=["HS256"]
    )


def walk(parser: argparse.ArgumentParser, path: str = "sesflow") -> list[tuple[str, Any]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += walk(child, f"{path} {name}")
    return found


def test_every_operator_command_has_complete_help() -> None:
    from sesflow.cli.main import build_parser

    commands = dict(walk(build_parser()))
    mine = [
        "sesflow send",
        "sesflow stats",
        "sesflow cancel",
        "sesflow check",
        "sesflow dlq",
        "sesflow dlq list",
        "sesflow dlq show",
        "sesflow dlq replay",
        "sesflow dlq purge",
    ]
    for name in mine:
        parser = commands[name]
        assert parser.description and len(parser.description) > 40, name
        assert "examples:" in (parser.epilog or ""), name
        for action in parser._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        parser.format_help()  # renders without error


def test_extra_csv_columns_are_each_recipients_data() -> None:
    data = (
        b"name,Email,code,\nAnn,ann@example.com,A1,x\nBob,bob@example.com,,y\nC,ANN@example.com,C\n"
    )
    recipients = parse("list.csv", data)
    assert recipients.emails == ["ann@example.com", "bob@example.com"]
    # empty cells and unnamed columns left out; a duplicate's data is dropped with it
    assert recipients.data == [{"name": "Ann", "code": "A1"}, {"name": "Bob"}]
    assert recipients.personalised
    bare = parse("list.csv", b"ann@example.com,Ann\n")
    assert bare.data == [{}] and not bare.personalised


def test_json_objects_carry_data() -> None:
    items = (
        b'[{"email": "a@example.com", "name": "A", "n": 2},'
        b' {"email": "b@example.com", "data": {"x": {"y": 1}}}, "c@example.com"]'
    )
    recipients = parse("l.json", items)
    assert recipients.data == [{"name": "A", "n": 2}, {"x": {"y": 1}}, {}]


def test_personalised_batches_and_their_post_body() -> None:
    from sesflow.cli.send import Content, message_body
    from sesflow.common.schema import Attachment

    args = argparse.Namespace(
        topic="t",
        subject="Hi {{name}}",
        batch=1,
        at=None,
        no_track_opens=False,
        track_clicks=False,
        no_unsubscribe=False,
        from_email=None,
        template=None,
        reply_to=["r@example.com"],
    )
    data = b"email,name\na@example.com,A\nb@example.com,\n"
    attachment = Attachment(filename="a.pdf", content="QQ==", content_type="application/pdf")
    content = Content(html="<p>{{name}}</p>", text="{{name}}", attachments=(attachment,))
    batches = plan(args, data, parse("l.csv", data), content)
    assert [b.message.recipient_count for b in batches] == [1, 1]
    assert message_body(batches[0].message) == {
        "messages": [
            {
                "topic_id": "t",
                "recipients": [{"email": "a@example.com", "data": {"name": "A"}}],
                "subject": "Hi {{name}}",
                "content": "<p>{{name}}</p>",
                "text": "{{name}}",
                "reply_to": ["r@example.com"],
                "attachments": [
                    {"filename": "a.pdf", "content": "QQ==", "content_type": "application/pdf"}
                ],
                "track_opens": True,
                "track_clicks": False,
                "unsubscribe": True,
            }
        ]
    }
    assert message_body(batches[1].message)["messages"][0]["recipients"] == [
        {"email": "b@example.com"}
    ]
    templated = plan(
        argparse.Namespace(**{**vars(args), "template": "welcome", "subject": None}),
        data,
        parse("l.csv", data),
        Content(),
    )
    body = message_body(templated[0].message)["messages"][0]
    assert body["template"] == "welcome"
    assert not {"subject", "content", "text"} & set(body)


def test_lane_and_weight_reach_the_message() -> None:
    from sesflow.cli.main import build_parser
    from sesflow.cli.send import Content, message_body

    send = ["send", "l.csv", "--topic", "t", "--subject", "S", "--html", "b.html"]
    args = build_parser().parse_args([*send, "--lane", "transactional", "--weight", "2.5"])
    data = b"a@example.com\n"
    [batch] = plan(args, data, parse("l.csv", data), Content(html="<p>x</p>"))
    [body] = message_body(batch.message)["messages"]
    assert (body["lane"], body["weight"]) == ("transactional", 2.5)
    args = build_parser().parse_args(["send", "l.csv", "--topic", "t", "--subject", "S"])
    [batch] = plan(args, data, parse("l.csv", data), Content(html="<p>x</p>"))
    [body] = message_body(batch.message)["messages"]
    assert "lane" not in body and "weight" not in body  # bulk and 1: as older clients wrote it
    with pytest.raises(SystemExit):
        build_parser().parse_args(["send", "l.csv", "--topic", "t", "--lane", "express"])


def test_list_configuration_set_and_tenant_reach_the_message() -> None:
    from sesflow.cli.main import build_parser
    from sesflow.cli.send import Content, message_body

    send = ["send", "l.csv", "--topic", "t", "--subject", "S"]
    chosen = ["--list", "newsletter", "--configuration-set", "marketing", "--tenant", "acme"]
    data = b"a@example.com\n"
    args = build_parser().parse_args([*send, *chosen])
    [batch] = plan(args, data, parse("l.csv", data), Content(html="<p>x</p>"))
    [body] = message_body(batch.message)["messages"]
    assert (body["list"], body["configuration_set"], body["tenant"]) == (
        "newsletter",
        "marketing",
        "acme",
    )
    args = build_parser().parse_args(send)
    [batch] = plan(args, data, parse("l.csv", data), Content(html="<p>x</p>"))
    [body] = message_body(batch.message)["messages"]
    assert not {"list", "configuration_set", "tenant"} & set(body)
