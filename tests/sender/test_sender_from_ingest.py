"""From the ingest API to the mail each recipient gets: a personalised message naming a stored
template is accepted, the template is edited, then the dispatcher and an in-process sender run
against the SES stub, which renders every entry as SES does. The mail is the template as it was
when the message was accepted, with each recipient's own data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sesflow.common.connection import ensure_group
from sesflow.common.consumer import consumer_client
from sesflow.common.keys import DISPATCH_GROUP, Keys
from sesflow.common.settings import Settings
from sesflow.ingest.api import create_app
from sesflow.ingest.dispatcher import Dispatcher
from sesflow.sender.ses_client import SesClient
from sesflow.sender.worker import Sender

from support.senderkit import SECRET, Running, states
from support.sesstub import SesStub
from support.until import until

KEYS = Keys("sesflow")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTESTING", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
WELCOME = {
    "subject": "Welcome {{first_name}}",
    "html": "<p>Hello {{first_name}}, your code is <b>{{code}}</b>.</p>",
    "data": {"code": "NONE"},
}


@pytest.fixture
async def stub() -> AsyncIterator[SesStub]:
    async with SesStub() as server:
        yield server


@pytest.fixture
def settings_for_stub(
    sender_settings: Callable[..., Settings], stub: SesStub
) -> Callable[[], Settings]:
    return lambda: sender_settings(
        SES_ENDPOINT_URL=stub.url,
        SERVER_URL="https://track.example.com",
        EMAIL_SENDER="news@example.com",
        EMAIL_RATE="100000",
        EMAIL_BURST="1000",
        **CREDENTIALS,
    )


async def test_an_edited_template_leaves_accepted_mail_unchanged(
    redis: Any,
    stub: SesStub,
    settings_for_stub: Callable[[], Settings],
    running: Callable[[Sender], Running],
) -> None:
    settings = settings_for_stub()
    async with TestClient(TestServer(create_app(settings))) as http:
        assert (await http.put("/v1/templates/welcome", json=WELCOME)).status == 201
        body = {
            "messages": [
                {
                    "topic_id": "welcome",
                    "template": "welcome",
                    "recipients": [
                        {"email": "ada@example.org", "data": {"first_name": "<Ada>", "code": "A1"}},
                        {"email": "alan@example.org", "data": {"first_name": "Alan"}},
                    ],
                    "reply_to": ["help@example.com"],
                    "headers": {"X-Campaign": "welcome"},
                }
            ]
        }
        resp = await http.post("/v1/messages", json=body)
        assert resp.status == 202, await resp.text()
        msg_id = (await resp.json())["messages"][0]["id"]
        edited = {"subject": "Changed {{other}}", "html": "<p>Changed</p>"}
        assert (await http.put("/v1/templates/welcome", json=edited)).status == 200

    client = consumer_client(settings)
    try:
        await ensure_group(client, KEYS.requests, DISPATCH_GROUP)
        dispatcher = Dispatcher(client, settings, KEYS, consumer="test")
        reply = await client.xreadgroup(DISPATCH_GROUP, "test", {KEYS.requests: ">"}, count=1)
        [(entry_id, fields)] = reply[0][1]
        await dispatcher.handle(entry_id, fields)
    finally:
        await client.aclose()

    ses = SesClient(settings)
    run = running(Sender(settings, redis, ses, SECRET))
    try:

        async def both_sent() -> bool:
            found = await states(redis, KEYS.for_message(msg_id), msg_id)
            return len(found) == 2 and all(v.startswith("s") for v in found.values())

        await until(both_sent, within=20)
    finally:
        await run.stop()
        await ses.close()

    [ada] = stub.mail["ada@example.org"]
    assert ada.subject == "Welcome <Ada>"
    assert "<p>Hello &lt;Ada&gt;, your code is <b>A1</b>.</p>" in ada.html
    assert ada.text.startswith("Hello <Ada>, your code is A1.")  # generated at accept time
    assert ada.reply_to == ["help@example.com"]
    assert ada.headers["X-Campaign"] == "welcome"
    [alan] = stub.mail["alan@example.org"]
    assert alan.subject == "Welcome Alan"
    assert "your code is <b>NONE</b>" in alan.html  # the template's default
    assert stub.recipients == {"ada@example.org": 1, "alan@example.org": 1}
    assert "Changed" not in ada.html + alan.html
