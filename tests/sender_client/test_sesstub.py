"""The SES stub: SES's answer shapes (checked with botocore's own parsers), its knobs, the control
and stats endpoints, and its command line."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from sesflow.common.aws import boto_client, fetch_quota_sync
from sesflow.common.settings import Settings

from support import TESTS
from support.sesstub import SesStub
from support.until import until_sync


def send_body(*to: str, sender: str = "sender@example.com") -> dict[str, Any]:
    return {
        "FromEmailAddress": sender,
        "Destination": {"ToAddresses": list(to)},
        "Content": {"Simple": {"Subject": {"Data": "s"}, "Body": {"Html": {"Data": "<p>h</p>"}}}},
    }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json(content_type=None), response.headers


async def test_send_email_answers_like_sesv2(stub: SesStub, http: aiohttp.ClientSession) -> None:
    status, data, headers = await post(
        http, stub.url + "/v2/email/outbound-emails", send_body("a@example.org")
    )
    assert status == 200
    assert set(data) == {"MessageId"} and data["MessageId"].startswith("0100")
    assert headers["x-amzn-RequestId"]
    assert headers["Content-Type"].startswith("application/json")
    assert stub.recipients == {"a@example.org": 1}


async def test_errors_carry_sesv2_shapes(stub: SesStub, http: aiohttp.ClientSession) -> None:
    url = stub.url + "/v2/email/outbound-emails"
    stub.configure(error_rate=1.0)
    status, data, headers = await post(http, url, send_body("a@example.org"))
    assert status == 429
    assert data == {"message": "Maximum sending rate exceeded."}
    assert headers["x-amzn-ErrorType"].startswith("TooManyRequestsException:")
    assert headers["x-amzn-RequestId"]
    stub.configure(error_rate=0.0, reject_pattern="bad")
    status, data, headers = await post(http, url, send_body("bad@example.org"))
    assert (status, headers["x-amzn-ErrorType"].split(":")[0]) == (400, "MessageRejected")
    status, data, headers = await post(http, url, {"nonsense": True})
    assert (status, headers["x-amzn-ErrorType"].split(":")[0]) == (400, "BadRequestException")
    assert stub.bad_requests == 1 and stub.rejected == 1 and stub.injected_errors == 1


def test_botocore_parses_its_answers(
    stub_in_thread: str, make_settings: Callable[..., Settings]
) -> None:
    """boto3's own parsers read the stub's success and error shapes as they read SES's."""
    settings = make_settings(
        SES_ENDPOINT_URL=stub_in_thread, AWS_ACCESS_KEY_ID="t", AWS_SECRET_ACCESS_KEY="t"
    )
    client = boto_client(settings, "sesv2", attempts=1)
    kwargs = {
        "FromEmailAddress": "sender@example.com",
        "Destination": {"ToAddresses": ["a@example.org"]},
        "Content": {"Simple": {"Subject": {"Data": "s"}, "Body": {"Html": {"Data": "h"}}}},
    }
    assert client.send_email(**kwargs)["MessageId"]
    quota = fetch_quota_sync(settings)
    assert quota is not None
    assert (quota.source, quota.max_send_rate, quota.max_24h_send, quota.sent_last_24h) == (
        "sesv2:GetAccount",
        14.0,
        -1.0,
        1.0,
    )
    for knobs, code in [
        ({"error_rate": 1.0}, "TooManyRequestsException"),
        ({"error_rate": 0.0, "pause_seconds": 30}, "SendingPausedException"),
    ]:
        control_sync(stub_in_thread, knobs)
        with pytest.raises(ClientError) as raised:
            client.send_email(**kwargs)
        assert raised.value.response["Error"]["Code"] == code
    control_sync(stub_in_thread, {"pause_seconds": 0, "reject_pattern": "^no@"})
    answer = client.send_bulk_email(
        FromEmailAddress="sender@example.com",
        DefaultContent={"Template": {"TemplateName": "t", "TemplateData": "{}"}},
        BulkEmailEntries=[
            {"Destination": {"ToAddresses": ["yes@example.org"]}},
            {"Destination": {"ToAddresses": ["no@example.org"]}},
        ],
    )
    statuses = [r["Status"] for r in answer["BulkEmailEntryResults"]]
    assert statuses == ["SUCCESS", "MESSAGE_REJECTED"]


def control_sync(url: str, body: dict[str, Any]) -> None:
    """POST /stub/control from synchronous code (that stub runs in another thread)."""
    request = urllib.request.Request(
        url + "/stub/control",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.fixture
def stub_in_thread() -> Iterator[str]:
    """A stub on its own event loop in a thread, for synchronous boto3 calls."""

    ready: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def run() -> None:
        stop = asyncio.Event()
        async with SesStub() as stub:
            ready.append((stub.url, asyncio.get_running_loop(), stop))
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    until_sync(lambda: ready, what="the stub thread to listen", within=5, every=0.01)
    url, loop, stop = ready[0]
    yield url
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)


async def test_rate_is_enforced_per_recipient_and_429s_are_counted(
    stub: SesStub, http: aiohttp.ClientSession
) -> None:
    stub.configure(rate=5, burst=3)
    url = stub.url + "/v2/email/outbound-emails"
    statuses = [(await post(http, url, send_body(f"r{i}@example.org")))[0] for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    # Two recipients in one call need two tokens.
    await asyncio.sleep(0.25)  # ~1.25 tokens back
    status, _, _ = await post(http, url, send_body("x@example.org", "y@example.org"))
    assert status == 429
    assert stub.throttled == 3 and stub.sent == 3
    stats = stub.stats()
    assert stats["throttled"] == 3 and stats["max_per_second"] == 3


async def test_pause_expires(stub: SesStub, http: aiohttp.ClientSession) -> None:
    url = stub.url + "/v2/email/outbound-emails"
    stub.configure(pause_seconds=0.2)
    status, _, headers = await post(http, url, send_body("a@example.org"))
    assert status == 400 and headers["x-amzn-ErrorType"].startswith("SendingPausedException")
    async with http.get(stub.url + "/v2/email/account") as response:
        assert (await response.json())["SendingEnabled"] is False
    await asyncio.sleep(0.25)
    assert (await post(http, url, send_body("a@example.org")))[0] == 200


async def test_latency_is_applied(stub: SesStub, http: aiohttp.ClientSession) -> None:
    stub.configure(latency_ms=150)
    start = time.monotonic()
    assert (await post(http, stub.url + "/v2/email/outbound-emails", send_body("a@x.org")))[
        0
    ] == 200
    assert time.monotonic() - start >= 0.14


async def test_control_and_stats_endpoints(stub: SesStub, http: aiohttp.ClientSession) -> None:
    url = stub.url + "/v2/email/outbound-emails"
    for address in ["a@example.org", "a@example.org", "b@example.org"]:
        await post(http, url, send_body(address))
    async with http.get(stub.url + "/stub/stats", params={"recipients": "1"}) as response:
        stats = await response.json()
    assert stats["sent"] == 3 and stats["messages"] == 3 and stats["calls"] == 3
    assert stats["unique_recipients"] == 2 and stats["duplicate_recipients"] == 1
    assert stats["recipients"] == {"a@example.org": 2, "b@example.org": 1}
    assert sum(stats["per_second"].values()) == 3
    status, config, _ = await post(
        http, stub.url + "/stub/control", {"latency_ms": 5, "rate": 100, "reset": True}
    )
    assert status == 200 and config["latency_ms"] == 5 and config["rate"] == 100
    assert stub.sent == 0 and not stub.recipients
    async with http.get(stub.url + "/v2/email/account") as response:
        assert (await response.json())["SendQuota"]["MaxSendRate"] == 100
    status, error, _ = await post(http, stub.url + "/stub/control", {"no_such_knob": 1})
    assert status == 400 and error["error"] == "bad_control"
    status, error, _ = await post(http, stub.url + "/stub/control", {"reject_pattern": "("})
    assert status == 400


async def test_recent_messages_are_bounded(stub: SesStub, http: aiohttp.ClientSession) -> None:
    stub.configure(keep_messages=2)
    for i in range(3):
        await post(http, stub.url + "/v2/email/outbound-emails", send_body(f"{i}@example.org"))
    async with http.get(stub.url + "/stub/messages") as response:
        recent = await response.json()
    assert [m["Destination"]["ToAddresses"] for m in recent] == [
        ["1@example.org"],
        ["2@example.org"],
    ]


async def test_daily_quota(stub: SesStub, http: aiohttp.ClientSession) -> None:
    stub.configure(max_24h=1)
    url = stub.url + "/v2/email/outbound-emails"
    assert (await post(http, url, send_body("a@example.org")))[0] == 200
    status, data, _ = await post(http, url, send_body("b@example.org"))
    assert status == 400 and data["message"] == "Daily message quota exceeded."
    assert stub.quota_answers == 1


async def test_runs_as_a_process_and_prints_its_url(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "support.sesstub",
            "--port",
            "0",
            "--rate",
            "7",
            "--latency-ms",
            "1",
        ],
        stdout=asyncio.subprocess.PIPE,
        cwd=TESTS,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with http.get(url + "/stub/stats") as response:
            stats = await response.json()
        assert stats["config"]["rate"] == 7 and stats["config"]["latency_ms"] == 1
        status, _, _ = await post(http, url + "/v2/email/outbound-emails", send_body("a@x.org"))
        assert status == 200
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_templated_send_email_is_rendered_as_ses_renders_it(
    stub: SesStub, http: aiohttp.ClientSession
) -> None:
    body = {
        "FromEmailAddress": "sender@example.com",
        "Destination": {"ToAddresses": ["t@example.org"]},
        "ReplyToAddresses": ["help@example.com"],
        "Content": {
            "Template": {
                "TemplateContent": {
                    "Subject": "Hi {{{name}}}",
                    "Html": "<p>{{name}} \\{{name}}</p>",
                    "Text": "Hi {{name}}",
                },
                "TemplateData": json.dumps({"name": "<Ada>"}),
                "Headers": [{"Name": "X-Campaign", "Value": "spring"}],
            }
        },
    }
    async with http.post(f"{stub.url}/v2/email/outbound-emails", json=body) as resp:
        assert resp.status == 200, await resp.text()
    [mail] = stub.mail["t@example.org"]
    assert (mail.subject, mail.html) == ("Hi <Ada>", "<p>&lt;Ada&gt; {{name}}</p>")
    assert mail.text == "Hi &lt;Ada&gt;"  # SES escapes {{x}} in the text part too
    assert mail.headers == {"X-Campaign": "spring"} and mail.reply_to == ["help@example.com"]
    async with http.get(f"{stub.url}/stub/mail") as resp:
        assert (await resp.json())["t@example.org"][0]["subject"] == "Hi <Ada>"
