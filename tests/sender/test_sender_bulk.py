"""Personalised mail through SendBulkEmail: an in-process sender with the real SES client against
the SES stub, which renders every entry the way SES does; the assertions are on the mail each
recipient would get."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sesflow.common.keys import Keys
from sesflow.common.schema import Job, MessageContent
from sesflow.common.settings import Settings
from sesflow.common.tracking import Token, verify, verify_click
from sesflow.sender.ses_client import SesClient
from sesflow.sender.worker import Sender

from support.senderkit import SECRET, Running, events, new_msg_id, reasons, states
from support.sesstub import SesStub
from support.until import until

KEYS = Keys("sesflow")
PART = KEYS.partition(0)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
PUBLIC = "https://track.example.com"

Start = Callable[[Sender], Running]


@pytest.fixture
async def stub() -> AsyncIterator[SesStub]:
    async with SesStub() as server:
        yield server


@pytest.fixture
def bulk_settings(
    sender_settings: Callable[..., Settings], stub: SesStub
) -> Callable[..., Settings]:
    def make(**env: Any) -> Settings:
        base = {
            "SES_ENDPOINT_URL": stub.url,
            "SERVER_URL": PUBLIC,
            "EMAIL_SENDER": "news@example.com",
            "EMAIL_RATE": "100000",
            "EMAIL_BURST": "1000",
            "SENDER_CONCURRENCY": "100",
            **CREDENTIALS,
        }
        return sender_settings(**{**base, **env})

    return make


@pytest.fixture
async def start_sender(redis: Any, running: Start) -> AsyncIterator[Callable[[Settings], Running]]:
    clients: list[SesClient] = []

    def start(settings: Settings) -> Running:
        ses = SesClient(settings)
        clients.append(ses)
        sender = Sender(settings, redis, ses, SECRET)
        sender.ses_pause_s = 0.3
        return running(sender)

    yield start
    for ses in clients:
        await ses.close()


async def queue_message(
    redis: Any, content: MessageContent, recipients: list[tuple[str, dict[str, Any]]]
) -> str:
    """Store the content once and queue one job per recipient with its own data (field `d`)."""
    part = KEYS.for_message(content.msg_id)
    await redis.hset(part.message(content.msg_id), mapping=content.to_hash())
    pipe = redis.pipeline(transaction=False)
    for index, (email, data) in enumerate(recipients):
        own = json.dumps(data, separators=(",", ":")) if data else ""
        pipe.xadd(
            part.sends, Job(msg_id=content.msg_id, index=index, email=email, data=own).fields()
        )
    await pipe.execute()
    return content.msg_id


def message(**fields: Any) -> MessageContent:
    msg_id = fields.pop("msg_id", None) or new_msg_id()
    base: dict[str, Any] = {
        "msg_id": msg_id,
        "topic": "spring",
        "subject": "Hi {{first_name}}",
        "html": "<p>Hello {{first_name}}</p>",
        "accepted_ms": int(msg_id.split("-")[0]),
    }
    return MessageContent(**{**base, **fields})


async def all_final(redis: Any, msg_id: str, count: int) -> bool:
    found = await states(redis, PART, msg_id)
    return len(found) == count and not any(v.startswith("i:") for v in found.values())


def token_in(url: str) -> Any:
    token = verify(SECRET, parse_qs(urlsplit(url).query)["t"][0])
    assert token is not None
    return token


async def test_a_personalised_campaign_of_500_goes_out_50_per_call(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    count = 500
    content = message(
        subject="Hi {{first_name}}, spring is here",
        html=(
            "<html><body><p>Hello {{first_name}}, your code is <b>{{code}}</b>.</p>"
            '<a href="https://shop.example/spring">Shop</a></body></html>'
        ),
        text="Hello {{first_name}}, your code is {{code}}.",
        data=json.dumps({"first_name": "there"}),
        reply_to=("help@example.com",),
        headers=(("X-Campaign", "spring"),),
        track_clicks=True,
        total=count,
    )
    recipients = [
        (f"r{n}@example.org", {"code": f"C{n}"} | ({"first_name": f"Name{n}"} if n % 5 else {}))
        for n in range(count)
    ]
    msg_id = await queue_message(redis, content, recipients)
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, msg_id, count), within=30)
    await run.stop()

    assert stub.bulk_calls >= 1
    assert stub.calls <= math.ceil(count / 50) + 3
    found = await states(redis, PART, msg_id)
    ses_ids = {e.index: e.ses_id for e in await events(redis, PART) if e.type == "sent"}
    for index, (email, data) in enumerate(recipients):
        name = data.get("first_name", "there")
        [mail] = stub.mail[email]
        assert found[index] == "s" and ses_ids[index] == mail.message_id
        assert mail.subject == f"Hi {name}, spring is here"
        assert f"<p>Hello {name}, your code is <b>C{index}</b>.</p>" in mail.html
        assert mail.text == f"Hello {name}, your code is C{index}."
        assert mail.reply_to == ["help@example.com"]
        assert mail.from_email == "news@example.com"
        assert mail.headers["X-Campaign"] == "spring"
        rid = f"{msg_id}_{index}"
        assert mail.headers["X-Request-ID"] == rid
        assert mail.tags == {"sesflow-rid": rid, "sesflow-topic": "spring"}
        unsubscribe = mail.headers["List-Unsubscribe"].strip("<>")
        assert token_in(unsubscribe).e == email and token_in(unsubscribe).r == rid
        assert mail.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        click = mail.html.split('<a href="', 1)[1].split('"', 1)[0]
        sealed = verify_click(SECRET, parse_qs(urlsplit(click).query)["t"][0])
        assert sealed == Token(k="c", r=rid, t="spring", u="https://shop.example/spring")
        pixel = mail.html.split('<img src="', 1)[1].split('"', 1)[0]
        assert token_in(pixel).k == "o" and token_in(pixel).r == rid
    assert stub.recipients == {email: 1 for email, _ in recipients}


async def test_values_appear_literally_in_every_part(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    """HTML in data stays text in the HTML part and as-is in the subject and text; the user's own
    braces and backslashes are never read as template syntax."""
    content = message(
        subject="{{name}} said {{ not a placeholder }} and {{{{name}}}}",
        html=r"<p>{{name}} {{{name}}} \{{name}} C:\{{dir}} {x} {{</p>",
        text=r"{{name}} \\{{dir}} }}{{",
        track_opens=False,
        unsubscribe=False,
    )
    evil = "<b>Ada</b> & \"Bob\" 'x' `y` = {{name}}"
    recipients = [(f"e{n}@example.org", {"name": evil, "dir": "tmp"}) for n in range(3)]
    msg_id = await queue_message(redis, content, recipients)
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, msg_id, 3))
    await run.stop()
    escaped = (
        "&lt;b&gt;Ada&lt;/b&gt; &amp; &quot;Bob&quot; &#x27;x&#x27; &#x60;y&#x60; &#x3D; {{name}}"
    )
    assert stub.bulk_calls == 1
    for email, _ in recipients:
        [mail] = stub.mail[email]
        assert mail.bulk
        assert mail.subject == f"{evil} said {{{{ not a placeholder }}}} and {{{{{evil}}}}}"
        assert mail.html == rf"<p>{escaped} {{{escaped}}} \{escaped} C:\tmp {{x}} {{{{</p>"
        assert mail.text == rf"{evil} \\tmp }}}}{{{{"


async def test_one_rejected_one_throttled_the_rest_sent(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    """Per-entry outcomes of one bulk call: MESSAGE_REJECTED fails that recipient with the code,
    ACCOUNT_THROTTLED releases it and it is sent later; the others are sent once."""
    emails = [f"p{n}@example.org" for n in range(6)]
    stub.configure(
        entry_statuses={emails[1]: ["MESSAGE_REJECTED"], emails[2]: ["ACCOUNT_THROTTLED"]}
    )
    msg_id = await queue_message(redis, message(), [(e, {"first_name": e}) for e in emails])
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, msg_id, 6))
    found = await states(redis, PART, msg_id)
    await run.stop()
    assert found[1] == "f"
    assert (await reasons(redis, PART, msg_id))[1] == "rejected:MessageRejected"
    assert all(found[n].startswith("s") for n in (0, 2, 3, 4, 5))
    assert stub.recipients == {e: 1 for e in emails if e != emails[1]}
    assert len(stub.mail[emails[2]]) == 1
    assert stub.bulk_calls == 1  # the throttled one went again alone, through SendEmail
    assert stub.mail[emails[2]][0].subject == f"Hi {emails[2]}"


async def test_an_ambiguous_bulk_call_leaves_every_entry_unknown(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    stub.configure(disconnect_rate=1.0)
    emails = [f"a{n}@example.org" for n in range(4)]
    msg_id = await queue_message(redis, message(), [(e, {"first_name": "A"}) for e in emails])
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, msg_id, 4))
    await run.stop()
    assert set((await states(redis, PART, msg_id)).values()) == {"u"}
    assert stub.bulk_calls == 1 and stub.disconnects == 1


async def test_attachments_arrive_intact_with_the_same_mail(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    pdf = bytes(range(256)) * 40
    attachments = [
        {
            "filename": "a.pdf",
            "content_type": "application/pdf",
            "content": base64.b64encode(pdf).decode(),
        },
        {"filename": "n.txt", "content_type": "text/plain", "content": "aGk="},
    ]
    content = message(
        text="Hello {{first_name}}",
        reply_to=("help@example.com",),
        headers=(("X-Campaign", "spring"),),
        attachments=json.dumps(attachments),
    )
    emails = ["x1@example.org", "x2@example.org"]
    msg_id = await queue_message(redis, content, [(e, {"first_name": e[:2]}) for e in emails])
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, msg_id, 2))
    await run.stop()
    assert stub.bulk_calls == 0  # SendEmail, Simple content with Attachments
    for email in emails:
        [mail] = stub.mail[email]
        assert mail.attachments == [
            ("a.pdf", "application/pdf", pdf),
            ("n.txt", "text/plain", b"hi"),
        ]
        assert (mail.subject, mail.text) == (f"Hi {email[:2]}", f"Hello {email[:2]}")
        assert mail.reply_to == ["help@example.com"]
        assert mail.headers["X-Campaign"] == "spring"
        assert token_in(mail.headers["List-Unsubscribe"].strip("<>")).e == email


async def test_single_mode_sends_the_same_mail_one_call_each(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    content = message(
        html='<p>Hi {{first_name}} <a href="https://a.example/?u={{first_name}}">a</a></p>',
        text="Hi {{first_name}}",
        track_clicks=True,
        headers=(("X-Campaign", "spring"),),
        reply_to=("help@example.com",),
    )
    recipients = [(f"s{n}@example.org", {"first_name": f"<N{n}>"}) for n in range(4)]
    bulk_id = await queue_message(redis, content, recipients)
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, bulk_id, 4))
    await run.stop()
    bulk_mail = {e: stub.mail.pop(e)[0] for e, _ in recipients}
    calls = stub.calls

    # the same jobs again (same request ids, so the same signed URLs), now one call each
    await redis.delete(PART.state(bulk_id), PART.finals(bulk_id))
    await queue_message(redis, content, recipients)
    run = start_sender(bulk_settings(SEND_MODE="single"))
    await until(lambda: all_final(redis, bulk_id, 4))
    await run.stop()
    assert stub.bulk_calls == 1 and stub.calls - calls == 4
    for email, _ in recipients:
        [mail] = stub.mail[email]
        assert not mail.bulk and bulk_mail[email].bulk
        for field in ("subject", "html", "text", "headers", "reply_to", "tags", "from_email"):
            assert getattr(mail, field) == getattr(bulk_mail[email], field), field
        click = mail.html.split('<a href="', 1)[1].split('"', 1)[0]
        assert token_in(click).u.startswith("https://a.example/?u=%3CN")  # percent-encoded


async def test_a_message_beyond_the_inline_template_limit_goes_one_call_each(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    """SES takes inline templates up to 1 MB: a larger message goes through SendEmail."""
    big = "<p>{{first_name}}</p>" + "<p>" + "x" * 1_000_000 + "</p>"
    emails = ["big1@example.org", "big2@example.org"]
    content = message(html=big, track_opens=False)
    msg_id = await queue_message(redis, content, [(e, {"first_name": e[:4]}) for e in emails])
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, msg_id, 2))
    await run.stop()
    assert stub.bulk_calls == 0 and stub.calls == 2
    assert all(stub.mail[e][0].html.startswith(f"<p>{e[:4]}</p>") for e in emails)


async def test_a_setup_fault_inside_a_bulk_call_pauses_and_fails_nothing(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    """An entry answered MAIL_FROM_DOMAIN_NOT_VERIFIED blames our setup: its job stays queued
    (the setup pauses until a probe gets through), then it is sent once; nothing fails."""
    emails = [f"m{n}@example.org" for n in range(4)]
    stub.configure(entry_statuses={emails[0]: ["MAIL_FROM_DOMAIN_NOT_VERIFIED"]})
    msg_id = await queue_message(redis, message(), [(e, {"first_name": "M"}) for e in emails])
    run = start_sender(bulk_settings(SETUP_PROBE_INTERVAL="0.3"))
    await until(lambda: all_final(redis, msg_id, 4))
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert all(v.startswith("s") for v in found.values()), found
    assert stub.recipients == {e: 1 for e in emails}


async def test_a_transient_entry_fails_that_recipient_and_pauses_nothing(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    """TRANSIENT_FAILURE is about one entry of an answered call, not SES out of reach: after
    MAX_ATTEMPTS that job fails (and is dead-lettered); no setup pause stops the others."""
    emails = [f"t{n}@example.org" for n in range(4)]
    stub.configure(entry_statuses={emails[1]: ["TRANSIENT_FAILURE"]})
    msg_id = await queue_message(redis, message(), [(e, {"first_name": "T"}) for e in emails])
    run = start_sender(bulk_settings(MAX_ATTEMPTS="1", SETUP_PROBE_INTERVAL="0.2"))
    await until(lambda: all_final(redis, msg_id, 4))
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert (
        found[1] == "f" and (await reasons(redis, PART, msg_id))[1] == "transient:TRANSIENT_FAILURE"
    ), found
    assert all(found[n].startswith("s") for n in (0, 2, 3))
    assert stub.recipients == {e: 1 for e in emails if e != emails[1]}
    assert stub.bulk_calls == 1 and stub.calls == 1
    [(_, dead)] = await redis.xrange(PART.sends_dead)
    assert dead["e"] == emails[1] and dead["reason"] == "transient:TRANSIENT_FAILURE"
    assert await redis.hgetall(KEYS.setup_paused) == {}


async def test_a_bulk_call_refused_for_one_entry_fails_only_that_recipient(
    redis: Any, stub: SesStub, bulk_settings: Any, start_sender: Any
) -> None:
    """A 400 to the whole call sent nothing: each entry goes again through SendEmail with the
    same mail, so only the bad address fails and the others are sent, once each."""
    emails = [f"b{n}@example.org" for n in range(4)]
    stub.configure(bad_address_pattern=r"^b2@")
    msg_id = await queue_message(redis, message(), [(e, {"first_name": e[:2]}) for e in emails])
    run = start_sender(bulk_settings())
    await until(lambda: all_final(redis, msg_id, 4))
    await run.stop()
    found = await states(redis, PART, msg_id)
    assert (
        found[2] == "f"
        and (await reasons(redis, PART, msg_id))[2] == "rejected:BadRequestException"
    ), found
    assert all(found[n].startswith("s") for n in (0, 1, 3))
    assert stub.recipients == {e: 1 for e in emails if e != emails[2]}
    assert stub.bulk_calls == 1 and stub.calls == 1 + len(emails)
    for email in (emails[0], emails[1], emails[3]):
        [mail] = stub.mail[email]
        assert not mail.bulk and mail.subject == f"Hi {email[:2]}"
        assert mail.headers["X-Request-ID"] == f"{msg_id}_{emails.index(email)}"
