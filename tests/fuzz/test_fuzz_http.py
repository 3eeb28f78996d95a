"""Random and mutated requests to every route of every HTTP role, in-process, on a real
redis-server: no answer is a 5xx, every 4xx is a JSON `{"error", "detail"}` (the recipients'
unsubscribe page aside), and every role keeps answering.

Hypothesis, derandomized (the same examples on every run) and bounded: the suite stays well under
a minute. A failure prints the request that caused it, shrunk to its simplest form.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from yarl import URL

from sesflow.common.tracking import Token, sign

from support.fuzzkit import Fuzzed, Roles, mutated, raw_header_lines, requests, routes_of

# No shrinking: the assertion message shows the request, and shrinking a failure can take
# minutes, past the per-test timeout that would then hide it.
# A longer hunt: FUZZ_EXAMPLES=5000, and FUZZ_RANDOM=1 for new examples on each run (the
# failure message shows the request; pytest's --hypothesis-seed=N replays a run).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

FUZZ_RAW = settings(FUZZ, max_examples=max(EXAMPLES // 3, 1))

# Pages meant for a person's browser: a 4xx there is HTML on purpose.
HUMAN_PAGES = {("GET", "/v1/events/unsubscribe")}

MESSAGE = {"topic_id": "t", "emails": ["a@x.io", "b@x.io"], "subject": "s", "content": "<p>c</p>"}
RUST = {"messages": [MESSAGE], "scheduled_at": "2030-01-01 09:00:00"}
GO = {
    "messages": [
        {"topicId": "g", "emails": ["a@x.io"], "subject": "s", "content": "c", "trackOpens": True},
        {"planId": 7, "emails": ["b@x.io"], "subject": "s", "content": "c", "fromEmail": "a@x.io"},
    ]
}
# The personalised message model and a stored template, for the fuzzer to mutate field by field.
PERSONAL = {
    "messages": [
        {
            "topic_id": "p",
            "subject": "Hi {{first_name}}",
            "content": "<p>{{first_name}}: {{code}}</p>",
            "text": "{{first_name}}: {{code}}",
            "data": {"first_name": "there", "code": {"x": 1}},
            "recipients": [{"email": "a@x.io", "data": {"code": "A1", "n": 2.5, "ok": True}}],
            "reply_to": ["Help <help@x.io>"],
            "headers": {"X-Campaign": "spring"},
            "attachments": [
                {"filename": "a.pdf", "content_type": "application/pdf", "content": "QQ=="}
            ],
        },
        {"topic_id": "q", "template": "welcome", "emails": ["b@x.io"], "data": {"first_name": "B"}},
    ]
}
TEMPLATE = {
    "subject": "Welcome {{first_name}}",
    "html": "<p>{{first_name}}</p>",
    "text": "",
    "data": {},
}
SES_EVENTS = [
    {
        "eventType": "Bounce",
        "mail": {
            "messageId": "0100-ses",
            "destination": ["a@x.io"],
            "tags": {"sesflow-rid": ["1795535162423-0_0"], "sesflow-topic": ["t"]},
            "headers": [{"name": "X-Request-ID", "value": "1795535162423-0_0"}],
        },
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "a@x.io", "diagnosticCode": "550"}],
        },
    },
    {
        "notificationType": "Delivery",
        "mail": {"messageId": "0100-ses", "timestamp": "2024-01-01T00:00:00.000Z"},
        "delivery": {"recipients": ["a@x.io"], "timestamp": "2024-01-01T00:00:01.000Z"},
    },
    {
        "eventType": "Click",
        "mail": {"messageId": "0100-ses", "tags": {"sesflow-rid": ["1-0_3"]}},
        "click": {"link": "https://example.com/", "timestamp": "2024-01-01T00:00:01Z"},
    },
    {
        "eventType": "Subscription",
        "mail": {"messageId": "x"},
        "subscription": {"newTopicPreferences": {"unsubscribeAll": True}},
    },
]


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


async def send(client: TestClient[Any, Any], req: Fuzzed) -> None:
    """One request: never a 5xx, a JSON error body for a 4xx, and the role still answers."""
    shown = f"{req.method} {req.path_qs[:300]} {req.headers} {req.body[:300]!r}"
    try:
        async with client.request(
            req.method,
            URL(req.path_qs, encoded=True),
            headers=req.headers,
            data=req.body,
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
    except aiohttp.ClientResponseError as exc:
        # What aiohttp's parser refuses is answered before the method is known, so a HEAD gets
        # the JSON error's body, which the client refuses. That still is a 400, not a crash.
        if req.method == "HEAD" and exc.status == 400 and "Data after" in exc.message:
            return await alive(client)
        raise
    assert resp.status < 500, f"{resp.status} {body[:500]!r} for {shown}"
    human = (req.method, req.path_qs.partition("?")[0]) in HUMAN_PAGES
    if resp.status >= 400 and req.method != "HEAD" and not human:
        assert resp.content_type == "application/json", f"{resp.content_type} for {shown}"
        error = json.loads(body)
        assert isinstance(error.get("error"), str) and "detail" in error, shown
    await alive(client)


async def exchange(client: TestClient[Any, Any], head: list[bytes], body: bytes) -> bytes:
    """One request written as bytes on a new connection, and everything the server answers."""
    assert client.server.port is not None
    lines = [*head, b"Content-Length: %d" % len(body)]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def send_raw(client: TestClient[Any, Any], req: Fuzzed, lines: list[bytes]) -> None:
    """The request as bytes on a socket, with header lines no HTTP client would send."""
    head = [f"{req.method} {req.path_qs} HTTP/1.1".encode(), b"Host: fuzz", b"Connection: close"]
    # The odd lines first: of two headers of one name, the first is the one read.
    head += [*lines, *(f"{name}: {value}".encode() for name, value in req.headers.items())]
    shown = f"{head!r} {req.body[:300]!r}"
    try:
        answer = await exchange(client, head, req.body)
    except (ConnectionResetError, BrokenPipeError):
        # The server refused the head and closed before reading a large body: its kernel then
        # resets the connection, and the answer may be lost on the way. Ask again without the
        # body, so that the answer to these headers is still checked.
        answer = await exchange(client, head, b"")
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split(b" ")[1])
    assert status < 500, f"{status} {answer[:500]!r} for {shown}"
    human = (req.method, req.path_qs.partition("?")[0]) in HUMAN_PAGES
    if status >= 400 and req.method != "HEAD" and not human:
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in headers.lower(), shown
        error = json.loads(body)
        assert isinstance(error.get("error"), str) and "detail" in error, shown
    await alive(client)


async def alive(client: TestClient[Any, Any]) -> None:
    async with client.get("/health") as health:
        assert health.status == 200, "the role stopped answering"


def examples_of(roles: Roles) -> dict[tuple[str, str], list[bytes]]:
    signed = [dumps(roles.signer.notification(event)) for event in SES_EVENTS]
    signed.append(dumps(roles.signer.subscription("UnsubscribeConfirmation")))
    suppression = [dumps({"reason": "manual", "detail": "asked by phone"}), b""]
    return {
        ("POST", "/v1/messages"): [dumps(RUST), dumps(GO), dumps(PERSONAL)],
        ("PUT", "/v1/templates/{name}"): [dumps(TEMPLATE)],
        ("PUT", "/v1/suppressions/{email}"): suppression,
        ("POST", "/v1/events/results"): signed,
        ("POST", "/v1/events/result"): signed,
        ("POST", "/v1/events/unsubscribe"): [b"List-Unsubscribe=One-Click"],
    }


def signed_bodies(roles: Roles) -> dict[tuple[str, str], st.SearchStrategy[bytes]]:
    """SNS messages that pass the signature check around a mutated SES event, so that what
    follows the check is fuzzed too."""

    def wrap(message: bytes) -> bytes:
        return dumps(roles.signer.notification(message.decode(errors="replace")))

    events = st.sampled_from(SES_EVENTS).map(dumps).flatmap(mutated).map(wrap)
    return {("POST", path): events for path in ("/v1/events/results", "/v1/events/result")}


ODD_TOKEN_FIELDS = ["", "1795535162423-0_0", "1-0_99999999999999999999", "x_y", "_", "a@x.io"]
ODD_TOKEN_FIELDS += ["1-0_\u00b2", "1-0_" + "9" * 5000, "\u00b2-0_1", "1-0_\u0663"]
ODD_TOKEN_FIELDS += ["@", "http://x/\u00e9", "https://[::1", "javascript:alert(1)", "https://a b/"]


def signed_tokens(secret: str) -> st.SearchStrategy[str]:
    """`t=` query strings with genuine signatures over odd contents, and bare request ids."""
    odd = st.one_of(
        st.sampled_from(ODD_TOKEN_FIELDS),
        st.text(max_size=40),
    )
    tokens = st.builds(Token, k=st.sampled_from(["o", "c", "u", "x"]), r=odd, t=odd, e=odd, u=odd)
    signed = tokens.map(lambda token: "t=" + sign(secret.encode(), token))
    # The older services' bare ids (counted with ALLOW_UNSIGNED_OPENS).
    bare = st.sampled_from(["requestId=", "request_id="]).flatmap(
        lambda name: st.one_of(st.sampled_from(ODD_TOKEN_FIELDS), st.text(max_size=12)).map(
            lambda rid: name + quote(rid)
        )
    )
    return st.one_of(signed, bare)


@FUZZ
@given(data=st.data())
async def test_fuzz_ingest(roles: Roles, data: st.DataObject) -> None:
    strategy = requests(routes_of(roles.ingest.app), examples_of(roles))
    for _ in range(2):
        await send(roles.ingest, data.draw(strategy))


@FUZZ
@given(data=st.data())
async def test_fuzz_tracker(roles: Roles, data: st.DataObject) -> None:
    strategy = requests(
        routes_of(roles.tracker.app),
        examples_of(roles),
        bodies=signed_bodies(roles),
        queries=signed_tokens(roles.settings.tracking_secret),
    )
    for _ in range(2):
        await send(roles.tracker, data.draw(strategy))


@FUZZ
@given(data=st.data())
async def test_fuzz_stats(roles: Roles, data: st.DataObject) -> None:
    strategy = requests(routes_of(roles.stats.app), examples_of(roles))
    for _ in range(2):
        await send(roles.stats, data.draw(strategy))


@FUZZ_RAW
@given(data=st.data())
async def test_fuzz_raw_header_bytes(roles: Roles, data: st.DataObject) -> None:
    for client in (roles.ingest, roles.tracker, roles.stats):
        req = data.draw(requests(routes_of(client.app), examples_of(roles)))
        await send_raw(client, req, data.draw(raw_header_lines()))
