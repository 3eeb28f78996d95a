"""`from_email` and EMAIL_SENDER: exactly one mailbox, parsed strictly and rebuilt, on every way
in (the API, entries producers XADD, the setting at startup)."""

from __future__ import annotations

from collections.abc import Callable
from email.header import decode_header, make_header
from email.utils import formataddr, parseaddr
from typing import Any

import pytest

from sesflow.common.addresses import InvalidMailbox, normalise_mailbox
from sesflow.common.errors import ConfigError
from sesflow.common.keys import DISPATCH_GROUP, Keys, PartitionKeys
from sesflow.common.producer import enqueue
from sesflow.common.schema import Job, MessageContent, MessageRequest
from sesflow.common.settings import Settings, settings_from_mapping
from sesflow.ingest.dispatcher import Dispatcher
from sesflow.sender.compose import compose

REFUSED = [
    "a@x.io, b@y.io",  # a list
    "a@x.io <b@y.io>",  # shows one address, sends as another
    '"a@x.io" <b@y.io>',  # the same, quoted
    "News <a@x.io>, Other <b@y.io>",
    "N <a@x.io> <b@y.io>",
    "N <<a@x.io>>",
    "N <a@x.io",
    "N <a@x.io> trailing",
    "Doe, John <a@x.io>",  # unquoted comma: a list in disguise
    "Bob \u202egnp.exe <a@x.io>",  # right-to-left override
    "Bob \u2066x\u2069 <a@x.io>",  # isolates
    "Bob\u200e <a@x.io>",  # left-to-right mark
    "Bob\u200f <a@x.io>",  # right-to-left mark
    "Bob\u200b <a@x.io>",  # zero-width space
    "a@x.io\r\nBcc: c@z.io",  # header injection
    '"a" "b" <a@x.io>',
    "not an address",
    "<>",
]

ACCEPTED = [
    ("a@x.io", "a@x.io"),
    ("  News <news@x.io> ", "News <news@x.io>"),
    ("<a@x.io>", "a@x.io"),
    ('"Doe, John" <j@x.io>', '"Doe, John" <j@x.io>'),
    ("J. Smith <j@x.io>", '"J. Smith" <j@x.io>'),
    ("Zoë Café <z@x.io>", "=?utf-8?b?Wm/DqyBDYWbDqQ==?= <z@x.io>"),
    ("Новости <n@x.io>", "=?utf-8?b?0J3QvtCy0L7RgdGC0Lg=?= <n@x.io>"),
]


@pytest.mark.parametrize("text", REFUSED)
def test_anything_but_one_mailbox_is_refused(text: str) -> None:
    with pytest.raises(InvalidMailbox):
        normalise_mailbox(text)


@pytest.mark.parametrize(("text", "rebuilt"), ACCEPTED)
def test_one_mailbox_is_rebuilt_with_an_encoded_name(text: str, rebuilt: str) -> None:
    assert normalise_mailbox(text) == rebuilt
    # What SES gets reads back as the name that was given.
    name, address = parseaddr(str(make_header(decode_header(rebuilt))))
    assert formataddr((name, address)) == formataddr(parseaddr(text.strip()))


def body(from_email: str) -> dict[str, Any]:
    message = {"topic_id": "t", "emails": ["a@x.io"], "subject": "s", "content": "c"}
    return {"messages": [{**message, "from_email": from_email}]}


async def test_the_api_refuses_a_spoofing_sender_and_writes_nothing(
    http: Any, redis: Any, keys: Keys
) -> None:
    for text in ("a@x.io <b@y.io>", "a@x.io, b@y.io", "Bob \u202e <a@x.io>"):
        resp = await http.post("/v1/messages", json=body(text))
        assert resp.status == 400, text
        assert (await resp.json())["error"] == "invalid_from"
    assert await redis.exists(keys.requests) == 0


async def test_the_api_stores_the_rebuilt_sender(http: Any, redis: Any, keys: Keys) -> None:
    resp = await http.post("/v1/messages", json=body("Zoë <z@x.io>"))
    assert resp.status == 202
    [(_, fields)] = await redis.xrange(keys.requests)
    assert "=?utf-8?q?Zo=C3=AB?= <z@x.io>" in fields["message"]


async def test_the_dispatcher_dead_letters_a_produced_entry_with_two_senders(
    dispatcher: Dispatcher, redis: Any, keys: Keys, p: PartitionKeys
) -> None:
    request = MessageRequest(
        topic_id="t", emails=["a@x.io"], subject="s", content="c", from_email="a@x.io, b@y.io"
    )
    await enqueue(redis, keys, request)
    reply = await dispatcher.client.xreadgroup(
        DISPATCH_GROUP, "test", {keys.requests: ">"}, count=1
    )
    await dispatcher.handle(*reply[0][1][0])
    [(_, dead)] = await redis.xrange(keys.requests_dead)
    assert dead["reason"] == "invalid_from"
    assert await redis.exists(p.sends) == 0


def test_email_sender_is_checked_and_rebuilt_at_startup() -> None:
    with pytest.raises(ConfigError, match="EMAIL_SENDER"):
        settings_from_mapping({"EMAIL_SENDER": "a@x.io <b@y.io>"})
    with pytest.raises(ConfigError, match="EMAIL_SENDER"):
        settings_from_mapping({"AWS_SES_FROM_EMAIL": "a@x.io, b@y.io"})
    settings = settings_from_mapping({"EMAIL_SENDER": "Zoë <z@x.io>"})
    assert settings.email_sender == "=?utf-8?q?Zo=C3=AB?= <z@x.io>"


def test_the_sender_refuses_a_stored_sender_that_is_not_one_mailbox(
    make_settings: Callable[..., Settings],
) -> None:
    """Content stored by an older version (whose check was lenient) is checked again."""
    settings = make_settings(EMAIL_SENDER="default@example.com")
    job = Job(msg_id="1-0", index=0, email="to@example.com")

    def content(from_email: str) -> MessageContent:
        return MessageContent(
            msg_id="1-0", topic="t", subject="s", html="<p>x</p>", from_email=from_email
        )

    with pytest.raises(InvalidMailbox):
        compose(settings, b"secret", content("a@x.io <b@y.io>"), job)
    assert compose(settings, b"secret", content("Zoë <z@x.io>"), job).from_email == (
        "=?utf-8?q?Zo=C3=AB?= <z@x.io>"
    )
    assert compose(settings, b"secret", content(""), job).from_email == "default@example.com"
